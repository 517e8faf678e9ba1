"""Reading finished jobs: their sweep axes (Hydra overrides) and their metrics (summary + rounds).

Every metric the report knows is one row of :data:`METRICS`; a metric a job did not record
(no attack, no defense, no privacy observer) reads as missing, never as an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import yaml

from fedsim.run_summary import cumulative_detection, recorded

Summary = dict[str, Any]
Rounds = list[dict[str, Any]]


@dataclass(frozen=True)
class Job:
    """One finished simulation: its folder, sweep overrides, summary and round records."""

    folder: Path
    overrides: dict[str, str]
    summary: Summary
    rounds: Rounds


def last_round(key: str) -> Callable[[Summary, Rounds], float | None]:
    """The value of ``key`` in the last round that recorded it."""

    def read(summary: Summary, rounds: Rounds) -> float | None:
        values = recorded(rounds, key)
        return values[-1] if values else None

    return read


def round_mean(key: str) -> Callable[[Summary, Rounds], float | None]:
    """The mean of ``key`` over the rounds that recorded it."""

    def read(summary: Summary, rounds: Rounds) -> float | None:
        values = recorded(rounds, key)
        return sum(values) / len(values) if values else None

    return read


def from_summary(key: str) -> Callable[[Summary, Rounds], float | None]:
    """A field of summary.json."""
    return lambda summary, rounds: summary.get(key)


def detection(which: str) -> Callable[[Summary, Rounds], float | None]:
    """Detection precision or recall over all rounds, from the summed per-round tp/fp/fn."""

    def read(summary: Summary, rounds: Rounds) -> float | None:
        scores = cumulative_detection(rounds)
        return None if scores is None else scores[which]

    return read


# The report's metric columns, in table order: column name -> how to read it from one job.
METRICS: dict[str, Callable[[Summary, Rounds], float | None]] = {
    "final_acc": from_summary("final_test_acc"),
    "best_acc": from_summary("best_test_acc"),
    "asr": last_round("attack_success_rate"),
    "source_recall": last_round("source_recall"),
    "det_precision": detection("precision"),
    "det_recall": detection("recall"),
    "psnr": round_mean("privacy.psnr"),  # the privacy observer's per-round mean over the images it attacked
    "ssim": round_mean("privacy.ssim"),
    "label_acc": round_mean("privacy.label_acc"),
    "bytes_up": from_summary("bytes_up_total"),
    "wall_s": from_summary("wall_s"),
}


def parse_overrides(lines: list[str]) -> dict[str, str]:
    """Hydra override strings (``key=value``, ``+key=value``) as a key -> value mapping."""
    overrides = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def read_job(folder: Path) -> Job:
    """The job whose summary.json lies in ``folder``."""
    overrides_file = folder / ".hydra" / "overrides.yaml"
    overrides = parse_overrides(yaml.safe_load(overrides_file.read_text()) or []) if overrides_file.exists() else {}
    rounds_file = folder / "rounds.jsonl"
    rounds = [json.loads(line) for line in rounds_file.read_text().splitlines() if line.strip()] if rounds_file.exists() else []
    return Job(folder, overrides, json.loads((folder / "summary.json").read_text()), rounds)


def find_jobs(root: Path) -> list[Job]:
    """Every finished job (a folder with summary.json) at or under ``root``, in a stable order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    folders = sorted({p.parent for p in root.rglob("summary.json")}, key=job_order)
    if not folders:
        raise FileNotFoundError(f"{root}: no finished job (no summary.json at or under it)")
    return [read_job(folder) for folder in folders]


def job_order(folder: Path) -> tuple:
    """Hydra's numbered job folders in numeric order (2 before 10), others by name."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in folder.parts)


def sweep_axes(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs (all keys for a single job)."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    if len(jobs) == 1:
        return keys
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def as_number(value: str) -> Any:
    """An override value as int or float where it is one, else the string."""
    for kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            continue
        return number if math.isfinite(number) else value
    return value


def jobs_frame(jobs: list[Job]) -> pd.DataFrame:
    """One row per job: ``job`` (folder), the sweep axes, then every metric some job recorded."""
    axes = sweep_axes(jobs)
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": str(job.folder)}
        row.update({axis: as_number(job.overrides[axis]) if axis in job.overrides else None for axis in axes})
        row.update({name: read(job.summary, job.rounds) for name, read in METRICS.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    recorded = [name for name in METRICS if frame[name].notna().any()]
    return frame[["job", *axes, *recorded]]


def fixed_overrides(jobs: list[Job]) -> dict[str, str]:
    """The overrides every job shares (the sweep's constant settings)."""
    axes = set(sweep_axes(jobs)) if len(jobs) > 1 else set(jobs[0].overrides)
    return {k: v for k, v in jobs[0].overrides.items() if k not in axes}
