"""Sweeps and run reports: a real 2x2 Hydra multirun read back by ``python -m fedsim.report``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fedsim.report.__main__ import write_report
from fedsim.report.plots import color_range, heatmap
from fedsim.report.collect import find_jobs, jobs_frame
from fedsim.report.tables import markdown, over_seeds

TINY = ["backend=inline", "dataset=digits", "rounds=2", "num_clients=4", "clients_per_round=4", "progress=false"]


def python_m(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A 2x2 multirun (strategy x Dirichlet alpha) of tiny inline jobs, through the CLI."""
    root = tmp_path_factory.mktemp("sweep")
    folder = root / "multirun"
    result = python_m(
        root, "fedsim", "-m", *TINY, "partition=dirichlet", "strategy=fedavg,fedprox",
        "partition.alpha=0.1,1.0", f"hydra.sweep.dir={folder}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


def test_report_has_one_row_per_job_with_axes_and_summary_values(sweep):
    result = python_m(sweep, "fedsim.report", str(sweep))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(sweep / "report.csv")
    assert len(table) == 4
    assert list(table.columns[:3]) == ["job", "strategy", "partition.alpha"]
    assert sorted(zip(table["strategy"], table["partition.alpha"])) == [
        ("fedavg", 0.1), ("fedavg", 1.0), ("fedprox", 0.1), ("fedprox", 1.0)
    ]
    for row in table.itertuples():
        job = Path(row.job)
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"strategy={row.strategy}" in overrides and f"partition.alpha={row[3]}" in overrides
        summary = json.loads((job / "summary.json").read_text())
        assert row.final_acc == pytest.approx(summary["final_test_acc"])
        assert row.bytes_up == summary["bytes_up_total"]
        assert row.wall_s == pytest.approx(summary["wall_s"])
    # the values are the jobs' own, not one placeholder
    assert table.final_acc.nunique() > 1
    # metrics no job recorded (no attack, defense or privacy observer) are left out, not zero-filled
    assert "asr" not in table.columns and "psnr" not in table.columns
    seeds = pd.read_csv(sweep / "report_seeds.csv")
    assert len(seeds) == 4 and (seeds["seeds"] == 1).all()
    assert "| strategy | partition.alpha | seeds | final_acc |" in result.stdout
    for png in ("report_heatmap.png", "report_curves.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def attacked_sweep(tmp_path_factory) -> Path:
    """A real 2-job multirun with every optional metric family: label flipping against MUD-HoG (ASR,
    source recall, detection) and an iDLG observer (PSNR, SSIM, label accuracy) in round 1."""
    root = tmp_path_factory.mktemp("attacked")
    folder = root / "multirun"
    result = python_m(
        root, "fedsim", "-m", "backend=inline", "dataset=digits", "rounds=2", "num_clients=300", "clients_per_round=6",
        "progress=false", "privacy_attack=idlg", "defense=mudhog", "attack=none,label_flip", f"hydra.sweep.dir={folder}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return folder


def test_optional_metrics_of_real_runs_are_read_where_recorded(attacked_sweep):
    frame = jobs_frame(find_jobs(attacked_sweep)).set_index("attack")
    assert list(frame.index) == ["none", "label_flip"]
    for attack, job in frame.iterrows():
        rounds = [json.loads(line) for line in (Path(job["job"]) / "rounds.jsonl").read_text().splitlines()]
        attacked = [r["privacy"] for r in rounds if "privacy" in r]
        assert attacked, "the observer attacked no round"
        for column in ("psnr", "ssim", "label_acc"):
            assert job[column] == pytest.approx(np.mean([p[column] for p in attacked])), column
        detection = [r["detection"] for r in rounds]
        tp, fn = sum(d["tp"] for d in detection), sum(d["fn"] for d in detection)
        if attack == "label_flip":
            assert job["asr"] == pytest.approx(rounds[-1]["attack_success_rate"])
            assert job["source_recall"] == pytest.approx(rounds[-1]["source_recall"])
            assert tp + fn > 0 and job["det_recall"] == pytest.approx(tp / (tp + fn))
        else:  # no attacker: no attack success, and recall is undefined, not 0
            assert math.isnan(job["asr"]) and math.isnan(job["det_recall"])
    result = python_m(attacked_sweep, "fedsim.report", str(attacked_sweep))
    assert result.returncode == 0, result.stderr
    assert {"psnr", "ssim", "label_acc", "asr"} <= set(pd.read_csv(attacked_sweep / "report.csv").columns)


def test_mean_and_std_over_seeds():
    frame = pd.DataFrame({
        "job": list("abcd"), "attack": ["none", "none", "flip", "flip"], "seed": [0, 1, 0, 1],
        "final_acc": [0.9, 0.8, 0.5, 0.7], "asr": [np.nan, np.nan, 0.2, 0.4],
    })
    table = over_seeds(frame).set_index("attack")
    assert table.loc["none", "seeds"] == 2
    assert table.loc["none", "final_acc_mean"] == pytest.approx(0.85)
    assert table.loc["flip", "final_acc_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert table.loc["flip", "asr_mean"] == pytest.approx(0.3) and math.isnan(table.loc["none", "asr_mean"])
    lines = markdown(table.reset_index()).splitlines()
    assert lines[0] == "| attack | seeds | final_acc | asr |"
    assert lines[3] == "| flip | 2 | 0.6000 ± 0.1414 | 0.3000 ± 0.1414 |"


def test_report_rejects_bad_input(tmp_path, sweep):
    assert python_m(tmp_path, "fedsim.report", str(tmp_path / "nope")).stderr.strip() == (
        f"fedsim.report: error: {tmp_path / 'nope'}: no such folder"
    )
    with pytest.raises(ValueError, match="--rows=attack: not a sweep axis"):
        write_report(sweep, rows="attack", cols="strategy")
    with pytest.raises(ValueError, match="--metric=asr: no job recorded it"):
        write_report(sweep, metric="asr")



def test_the_heatmap_puts_asr_beside_accuracy_on_a_fixed_rate_scale(tmp_path):
    frame = pd.DataFrame({"attack": ["none", "none", "flip", "flip"], "defense": ["none", "median"] * 2,
                          "final_acc": [0.901, 0.899, 0.895, 0.900], "asr": [np.nan, np.nan, 0.3, 0.0]})
    grids = heatmap(frame, "attack", "defense", ["final_acc", "asr"], tmp_path / "h.png")
    assert list(grids) == ["final_acc", "asr"] and grids["asr"].shape == grids["final_acc"].shape == (2, 2)
    assert grids["asr"].loc["flip", "none"] == 0.3 and math.isnan(grids["asr"].loc["none", "none"])
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = grids["final_acc"].to_numpy()
    assert color_range("final_acc", values, None, None) == (0.0, 1.0)  # not fitted to a 0.6-point spread
    assert color_range("final_acc", values, 0.8, 0.95) == (0.8, 0.95)
    assert color_range("psnr", np.array([20.0, 30.0]), None, None) == (20.0, 30.0)
