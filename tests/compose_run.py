"""Compose fedsim's Hydra config with overrides and run it: the shared helper of the strategy tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedsim.simulation import simulate


def compose_config(*overrides: str) -> dict[str, Any]:
    """The resolved config for ``overrides`` (on top of a quiet, small default)."""
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["progress=false", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def run_rounds(out_dir: Path, *overrides: str) -> list[dict[str, Any]]:
    """Run the composed config into ``out_dir``; returns the per-round records."""
    simulate(compose_config(*overrides), out_dir, progress=False)
    return [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]
