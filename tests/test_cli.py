"""The Hydra command line: help, config display, and one-line errors before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def fedsim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_help_lists_config_groups(tmp_path):
    result = fedsim(tmp_path, "--help")
    assert result.returncode == 0
    for group in ("dataset", "model", "partition", "strategy", "backend", "attack", "defense", "compression", "privacy_attack"):
        assert f"{group}:" in result.stdout


def test_cfg_job_shows_the_config(tmp_path):
    result = fedsim(tmp_path, "--cfg", "job", "partition=dirichlet", "partition.alpha=0.1")
    assert result.returncode == 0
    for field in ("rounds:", "num_clients:", "clients_per_round:", "local_epochs:", "batch_size:", "lr:", "seed:", "device:"):
        assert field in result.stdout
    assert "alpha: 0.1" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["strategy=fedavgg"], "strategy=fedavgg: unknown option; valid strategy options: fedavg, fedprox, fedspeed, ffa_lora, lora, monna"),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha=0: must be a finite number > 0"),
        (["clients_per_round=20"], "clients_per_round=20: must be an integer in [1, num_clients=10]"),
        (["lr=-0.1"], "lr=-0.1: must be a finite number > 0"),
        (["rounds=abc"], "rounds='abc': must be an integer >= 1"),
        (["device=gpu"], "device='gpu': valid: cpu, cuda, cuda:N, auto"),
        (["strategy=ffa_lora", "dp.clip=0"], "dp.clip=0: must be a finite number > 0"),
        (["dp.noise_multiplier=1.0"], "dp.noise_multiplier=1.0, dp.epsilon=None: strategy fedsim.strategies.fedavg.FedAvg "
         "does not run DP-SGD; use one that takes the dp settings (strategy=lora, strategy=ffa_lora)"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_work(tmp_path, args, message):
    result = fedsim(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"fedsim: error: {message}"
    assert not list(tmp_path.glob("outputs/*/*/rounds.jsonl"))


def test_missing_dataset_files_named(tmp_path):
    result = fedsim(tmp_path, "dataset=mnist", f"dataset.root={tmp_path}", "backend=inline")
    assert result.returncode == 2
    assert result.stderr.startswith("fedsim: error:")
    assert "train-images-idx3-ubyte" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
