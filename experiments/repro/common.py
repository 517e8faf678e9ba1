"""Shared plumbing of the reproduction scripts: run a composed config, write plots, end with PASS/FAIL."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedsim.simulation import simulate

OUT = Path(__file__).resolve().parent / "out"


def run(*overrides: str) -> list[dict[str, Any]]:
    """Run fedsim with ``overrides`` (inline backend, no progress bar); returns the per-round records."""
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["backend=inline", "progress=false", *overrides])
    with tempfile.TemporaryDirectory() as out:
        simulate(OmegaConf.to_container(cfg, resolve=True), Path(out), progress=False)
        return [json.loads(line) for line in (Path(out) / "rounds.jsonl").read_text().splitlines()]


def plot(curves: dict[str, list[float]], title: str, path: Path) -> None:
    """Test accuracy per round, one line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, accs in curves.items():
        ax.plot(range(1, len(accs) + 1), accs, label=label)
    ax.set(xlabel="round", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


def verdict(ok: bool, statement: str) -> None:
    """Print the closing PASS/FAIL line; exit non-zero on FAIL."""
    print(f"{'PASS' if ok else 'FAIL'}: {statement}")
    sys.exit(0 if ok else 1)
