"""Report plots: a heatmap of one metric over two sweep axes, and accuracy curves per setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.report.collect import Job, sweep_axes
from fedsim.report.tables import SEED_AXIS


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(frame: pd.DataFrame, rows: str, cols: str, metric: str, path: Path) -> pd.DataFrame:
    """Mean ``metric`` per (``rows``, ``cols``) cell, averaged over seeds and any other axis;
    writes the PNG and returns the grid."""
    grid = frame.pivot_table(index=rows, columns=cols, values=metric, aggfunc="mean", sort=False)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * grid.shape[1], 1.2 + 0.8 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
    ax.set(xlabel=cols, ylabel=rows, title=f"{metric} (mean over seeds and other axes)")
    for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white" if value < np.nanmean(grid) else "black")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return grid


def curves(jobs: list[Job], path: Path, key: str = "test_acc") -> None:
    """``key`` per round for every setting of the non-seed axes: mean over seeds, with a min-max band."""
    axes = [a for a in sweep_axes(jobs) if a != SEED_AXIS]
    settings: dict[str, list[Job]] = {}
    for job in jobs:
        label = " ".join(f"{a}={job.overrides.get(a, '')}" for a in axes) or "run"
        settings.setdefault(label, []).append(job)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, group in settings.items():
        series = pd.DataFrame({i: {r["round"]: r.get(key) for r in job.rounds} for i, job in enumerate(group)}).astype(float)
        line = ax.plot(series.index, series.mean(axis=1), marker="o", markersize=3, label=f"{label} (n={len(group)})")
        if len(group) > 1:
            ax.fill_between(series.index, series.min(axis=1), series.max(axis=1), alpha=0.2, color=line[0].get_color())
    ax.set(xlabel="round", ylabel=key, title=f"{key} per round (mean over seeds, band: min-max)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
