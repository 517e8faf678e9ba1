"""``python -m fedsim.report DIR``: a table (CSV + Markdown) and plots for a run or multirun folder.

Writes into DIR: ``report.csv`` (one row per job), ``report_seeds.csv`` (mean and std over
seeds per setting), ``report.md`` (both tables), ``report_heatmap.png`` (a metric over two
axes, by default ``attack`` x ``defense`` where swept, else the first two) and ``report_curves.png``
(test accuracy per round per setting). Prints the Markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedsim.report.collect import find_jobs, fixed_overrides, jobs_frame
from fedsim.report.plots import curves, heatmap
from fedsim.report.tables import SEED_AXIS, axis_columns, markdown, metric_columns, over_seeds

HEATMAP_AXES = ("attack", "defense")


def heatmap_axes(axes: list[str], rows: str | None, cols: str | None) -> tuple[str, str] | None:
    """The (rows, cols) axes of the heatmap: as asked, else attack x defense, else the first two non-seed axes."""
    if rows or cols:
        for name, axis in (("--rows", rows), ("--cols", cols)):
            if axis not in axes:
                raise ValueError(f"{name}={axis}: not a sweep axis; axes: {', '.join(axes) or 'none'}")
        return rows, cols  # type: ignore[return-value]
    if all(a in axes for a in HEATMAP_AXES):
        return HEATMAP_AXES
    candidates = [a for a in axes if a != SEED_AXIS]
    return (candidates[0], candidates[1]) if len(candidates) >= 2 else None


def write_report(folder: Path, rows: str | None = None, cols: str | None = None, metric: str = "final_acc",
                 vmin: float | None = None, vmax: float | None = None) -> str:
    """Build every report file in ``folder``; returns the Markdown."""
    jobs = find_jobs(folder)
    frame = jobs_frame(jobs)
    if metric not in metric_columns(frame):
        raise ValueError(f"--metric={metric}: no job recorded it; recorded: {', '.join(metric_columns(frame))}")
    seeds = over_seeds(frame)
    frame.to_csv(folder / "report.csv", index=False)
    seeds.to_csv(folder / "report_seeds.csv", index=False)
    fixed = " ".join(f"{k}={v}" for k, v in fixed_overrides(jobs).items())
    parts = [f"# fedsim report: {len(jobs)} jobs in {folder}", ""]
    if fixed:
        parts += [f"Fixed: `{fixed}`", ""]
    axes = tuple(axis_columns(frame))
    parts += ["## Mean ± std over seeds", "", markdown(seeds, axes), ""]
    parts += ["## Jobs", "", markdown(frame.assign(job=[str(j.folder.relative_to(folder)) for j in jobs]), axes), ""]
    shown = heatmap_axes(list(axes), rows, cols)
    if shown and (len(jobs) > 1 or rows):  # no one-cell heatmap for a single run unless asked
        metrics = [metric] + (["asr"] if metric != "asr" and "asr" in metric_columns(frame) else [])  # the attack's success beside it
        heatmap(frame, shown[0], shown[1], metrics, folder / "report_heatmap.png", vmin, vmax)
        parts.append(f"![{' and '.join(metrics)} over {shown[0]} x {shown[1]}](report_heatmap.png)")
    curves(jobs, folder / "report_curves.png")
    text = "\n".join(parts) + "\n"
    (folder / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.report", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a run or multirun folder (jobs are found by their summary.json)")
    parser.add_argument("--rows", help="heatmap row axis (default: attack, else the first sweep axis)")
    parser.add_argument("--cols", help="heatmap column axis (default: defense, else the second sweep axis)")
    parser.add_argument("--metric", default="final_acc", help="heatmap metric (default: final_acc; asr is shown beside it when recorded)")
    parser.add_argument("--vmin", type=float, help="colour scale minimum (default: 0 for rates such as accuracy, else the data's)")
    parser.add_argument("--vmax", type=float, help="colour scale maximum (default: 1 for rates, else the data's)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.folder, args.rows, args.cols, args.metric, args.vmin, args.vmax), end="")
    except (FileNotFoundError, ValueError) as exc:
        print(f"fedsim.report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
