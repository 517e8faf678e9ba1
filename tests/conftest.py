"""Shared test helpers: compose a fedsim config exactly as the CLI does, and run it."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedsim.engine.context import Run  # noqa: F401  (re-exported for the tests)
from fedsim.engine.simulation import simulate

SMALL = ["dataset=digits", "num_clients=4", "clients_per_round=4", "rounds=2", "progress=false", "backend=inline"]


def compose_config(defaults: list[str], *overrides: str) -> dict[str, Any]:
    """The resolved config, composed as the CLI does, for ``defaults`` then ``overrides`` (which replace them)."""
    merged = {o.split("=", 1)[0]: o for o in [*defaults, *overrides]}
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = compose(config_name="config", overrides=list(merged.values()))
    return OmegaConf.to_container(cfg, resolve=True)


def make_config(*overrides: str) -> dict[str, Any]:
    """The resolved config for ``overrides`` on top of a small, fast default set."""
    return compose_config(SMALL, *overrides)


def read_rounds(out_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's rounds.jsonl."""
    return [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]


def metrics_only(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Round records without wall-clock fields, for equality checks."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in records]


def cli_in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``python -m fedsim *args`` run in this process (Hydra's entry point)."""
    from fedsim.__main__ import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["fedsim", *args])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def run_sim(tmp_path: Path):
    """Run a simulation from overrides into a fresh folder; returns (summary, rounds records, folder)."""
    counter = iter(range(1000))

    def _run(*overrides: str) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
        out = tmp_path / f"run{next(counter)}"
        summary = simulate(make_config(*overrides), out, progress=False)
        return summary, read_rounds(out), out

    return _run

