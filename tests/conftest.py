"""Shared test helpers: compose the Hydra config and run a small simulation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedsim.simulation import simulate


def compose_config(overrides: list[str]) -> dict[str, Any]:
    """The resolved config for ``overrides`` (on top of a fast inline/digits base)."""
    base = ["backend=inline", "dataset=digits", "progress=false"]
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = compose(config_name="config", overrides=base + overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def run_simulation(out_dir: Path, overrides: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a simulation; returns its summary and its rounds.jsonl records."""
    summary = simulate(compose_config(overrides), out_dir, progress=False)
    records = [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]
    return summary, records


@pytest.fixture
def simulation(tmp_path: Path):
    """``simulation(overrides)`` -> (summary, records), run in a fresh tmp folder."""
    return lambda overrides: run_simulation(tmp_path, overrides)
