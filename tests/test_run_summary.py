"""Results at a glance: the task's own metrics in summary.json and the final line, and a curves panel
per metric family, from real runs."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import cli_in_process, read_rounds
from fedsim.curves import panels
from fedsim.run_summary import recorded

BASE = ["backend=inline", "dataset=digits", "rounds=2", "progress=false"]
ATTACKED = [*BASE, "num_clients=300", "clients_per_round=6", "privacy_attack=idlg", "attack=label_flip", "defense=mudhog",
            "compression=dgc"]


def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> tuple[str, dict, list[dict]]:
    out = tmp_path / "run"
    code, stdout, err = cli_in_process([*overrides, f"hydra.run.dir={out}"], tmp_path, monkeypatch)
    assert code == 0, err
    return stdout, json.loads((out / "summary.json").read_text()), read_rounds(out)


def test_an_attacked_private_compressed_run_summarises_its_own_metrics(tmp_path, monkeypatch) -> None:
    stdout, summary, rounds = run_cli(tmp_path, monkeypatch, *ATTACKED)
    assert summary["attack_success_rate"] == rounds[-1]["attack_success_rate"]
    assert summary["source_recall"] == rounds[-1]["source_recall"]
    tp, fn = (sum(r["detection"][k] for r in rounds) for k in ("tp", "fn"))
    assert tp + fn > 0 and summary["detection"]["recall"] == pytest.approx(tp / (tp + fn))
    assert set(summary["detection"]["flagged_share_by_kind"]) >= {"benign", "label_flip"}
    assert summary["privacy"]["psnr"] == pytest.approx(sum(recorded(rounds, "privacy.psnr")) / len(recorded(rounds, "privacy.psnr")))
    assert {"ssim", "label_acc"} <= set(summary["privacy"])
    dense = sum(c["bytes_up"] * c["compression_ratio"] for r in rounds for c in r["clients"].values())
    assert summary["compression_ratio"] == pytest.approx(dense / summary["bytes_up_total"]) and summary["compression_ratio"] > 10
    line = [ln for ln in stdout.splitlines() if ln.startswith("fedsim: ")][-1]
    for phrase in ("attack_success_rate", "source_recall", "detection P", "PSNR", "uplink compressed"):
        assert phrase in line, line
    assert [title for title, _, _ in panels(rounds)] == ["Test accuracy", "Loss", "Attack", "Detection (malicious)", "Privacy attack"]
    svg = ElementTree.parse(tmp_path / "run" / "curves.svg").getroot()  # well-formed, one titled panel per family
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert all(title in texts for title, _, _ in panels(rounds)) and len(list(svg.iter("{http://www.w3.org/2000/svg}polyline"))) >= 5


def test_a_plain_run_carries_no_task_metrics(tmp_path, monkeypatch) -> None:
    stdout, summary, rounds = run_cli(tmp_path, monkeypatch, *BASE, "num_clients=4", "clients_per_round=4")
    assert not {"attack_success_rate", "detection", "privacy", "dp_epsilon"} & set(summary)
    assert summary["compression_ratio"] == pytest.approx(1.0)
    assert "; results in" in stdout and "detection" not in stdout
    assert [title for title, _, _ in panels(rounds)] == ["Test accuracy", "Loss"]
