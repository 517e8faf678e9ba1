"""Report plots: heatmaps of metrics over two sweep axes (accuracy and ASR side by side), and accuracy curves per setting."""

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


# Metrics that are rates in [0, 1]: their colour scale is 0..1, so a 0.5-point spread looks like one.
UNIT_METRICS = frozenset({"final_acc", "best_acc", "asr", "source_recall", "det_precision", "det_recall", "ssim", "label_acc"})


def color_range(metric: str, values: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """The colour scale of one panel: as given, else 0..1 for a rate, else the data's own range."""
    unit = metric in UNIT_METRICS
    low = vmin if vmin is not None else (0.0 if unit else float(np.nanmin(values)))
    high = vmax if vmax is not None else (1.0 if unit else float(np.nanmax(values)))
    return low, high


def heatmap(frame: pd.DataFrame, rows: str, cols: str, metrics: list[str], path: Path,
            vmin: float | None = None, vmax: float | None = None) -> dict[str, pd.DataFrame]:
    """One panel per metric, side by side: the mean per (``rows``, ``cols``) cell over seeds and any other
    axis. Rates use a 0..1 colour scale, other metrics their own range, unless ``vmin``/``vmax`` are given.
    Writes the PNG and returns each metric's grid."""
    grids = {m: frame.pivot_table(index=rows, columns=cols, values=m, aggfunc="mean", sort=False, dropna=False) for m in metrics}
    first = next(iter(grids.values()))
    grids = {m: g.reindex(index=first.index, columns=first.columns) for m, g in grids.items()}  # same cells in every panel
    plt = pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * (1.6 + 1.3 * first.shape[1]), 1.2 + 0.8 * first.shape[0]),
                             squeeze=False)
    for ax, (metric, grid) in zip(axes[0], grids.items()):
        values = grid.to_numpy(dtype=float)
        low, high = color_range(metric, values, vmin, vmax)
        image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=low, vmax=high)
        ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns], rotation=30, ha="right")
        ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
        ax.set(xlabel=cols, ylabel=rows, title=f"{metric} (mean over seeds and other axes)")
        middle = (low + high) / 2
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="white" if value < middle else "black")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return grids


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
