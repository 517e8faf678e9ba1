"""Report tables: the per-job frame grouped over seeds, and Markdown rendering."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from fedsim.report.collect import METRICS

SEED_AXIS = "seed"


def axis_columns(frame: pd.DataFrame) -> list[str]:
    """The sweep-axis columns of a per-job frame (everything but the folder and the metrics)."""
    return [c for c in frame.columns if c != "job" and c not in METRICS]


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c in METRICS]


def over_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per setting of the non-seed axes: ``seeds`` (how many jobs), then mean and std
    (sample std; NaN for one seed) of every metric."""
    groups = [c for c in axis_columns(frame) if c != SEED_AXIS]
    metrics = metric_columns(frame)
    keyed = frame.assign(_all="all") if not groups else frame
    by = groups or ["_all"]
    grouped = keyed.groupby(by, sort=False, dropna=False)
    table = grouped[metrics].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table.insert(0, "seeds", grouped.size())
    table = table.reset_index()
    return table.drop(columns=["_all"]) if not groups else table


def cell(value: Any) -> str:
    """A table cell: 4 decimals below 1, 3 up to 1000, none above; integers plain; blanks for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.3f}"
    return str(value)


def mean_std_cell(mean: Any, std: Any) -> str:
    text = cell(mean)
    return f"{text} ± {cell(std)}" if text and cell(std) else text


def markdown(frame: pd.DataFrame, plain: tuple[str, ...] = ()) -> str:
    """A GitHub Markdown table of ``frame``; ``X_mean``/``X_std`` column pairs merge into ``X`` (mean ± std);
    ``plain`` columns (sweep axes) print as they are."""
    columns: list[tuple[str, list[str]]] = []
    for name in frame.columns:
        if name.endswith("_std") and f"{name[:-4]}_mean" in frame.columns:
            continue
        if name.endswith("_mean") and f"{name[:-5]}_std" in frame.columns:
            base = name[:-5]
            columns.append((base, [mean_std_cell(m, s) for m, s in zip(frame[name], frame[f"{base}_std"])]))
        else:
            columns.append((name, [str(v) if name in plain else cell(v) for v in frame[name]]))
    header = "| " + " | ".join(name for name, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(values[i] for _, values in columns) + " |" for i in range(len(frame))]
    return "\n".join([header, rule, *rows])
