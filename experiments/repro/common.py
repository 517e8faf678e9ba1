"""Helpers shared by the repro scripts: compose a config, run it, read its records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedsim.simulation import simulate

OUT = Path(__file__).resolve().parent / "out"


def run(name: str, overrides: list[str]) -> list[dict[str, Any]]:
    """Run the simulation for ``overrides`` into out/<name>; returns its round records."""
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    out_dir = OUT / name
    simulate(cfg, out_dir, progress=False)
    return [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]


def plot_curves(curves: dict[str, list[float]], ylabel: str, title: str, filename: str) -> None:
    """One line per labelled per-round curve, saved as out/<filename>."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set(xlabel="round", ylabel=ylabel, title=title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / filename, dpi=100)
    plt.close(fig)
    print(f"plot: {OUT / filename}")


def finish(passed: bool, claim: str) -> None:
    """Print the verdict line and exit non-zero on failure."""
    print(("PASS: " if passed else "FAIL: ") + claim)
    raise SystemExit(0 if passed else 1)
