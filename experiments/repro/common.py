"""Shared helpers of the reproduction scripts: compose a config, run it, read its rounds."""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from hydra import compose, initialize_config_module  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fedsim.engine.simulation import simulate  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def config(overrides: list[str]) -> dict[str, Any]:
    """The resolved config of ``overrides`` (inline backend, no progress bar), composed as the CLI does."""
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["backend=inline", "progress=false", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def run(name: str, overrides: list[str]) -> list[dict[str, Any]]:
    """Run one configuration (inline backend) into ``out/<name>``; returns its round records."""
    out = OUT / name
    simulate(config(overrides), out, progress=False)
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def run_many(jobs: dict[str, list[str]], under: str, workers: int = 2) -> dict[str, list[dict[str, Any]]]:
    """:func:`run` every ``name -> overrides`` job into ``out/<under>/<name>``, ``workers`` at a time in
    fresh processes (one torch thread each, so 2 workers use 2 cores); returns the round records by name."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return dict(zip(jobs, pool.map(run, [f"{under}/{name}" for name in jobs], jobs.values())))


def mean_last(records: list[dict[str, Any]], key: str, n: int = 3) -> float:
    """Mean of ``key`` over the last ``n`` rounds (smooths round-to-round noise)."""
    values = [r[key] for r in records[-n:] if r.get(key) is not None]
    return sum(values) / len(values) if values else float("nan")


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table on stdout."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in cells:
        print("| " + " | ".join(row) + " |")


def figure(ncols: int = 1, width: float = 6.0) -> tuple[Any, list[Any]]:
    """A headless matplotlib figure with ``ncols`` axes side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, 4), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig: Any, path: Path) -> None:
    """Legend and grid on every axis, then write the PNG and say where."""
    for ax in fig.axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


def finish(passed: bool, message: str) -> None:
    """Print the PASS/FAIL line and exit non-zero on FAIL."""
    print(("PASS: " if passed else "FAIL: ") + message)
    sys.exit(0 if passed else 1)


def plot(curves: dict[str, list[float]], title: str, path: Path, ylabel: str = "test accuracy") -> None:
    """One line per labelled per-round curve, saved at ``path``."""
    fig, (ax,) = figure(width=7.0)
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set(xlabel="round", ylabel=ylabel, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
