"""Results on disk: rounds.jsonl, summary.json (with the task metrics) and curves.svg."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from fedsim.curves import plot_curves
from fedsim.run_summary import task_metrics

if TYPE_CHECKING:
    from fedsim.trackers import Tracker


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-Inf) replaced by None, containers recursed."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    """Strict JSON (no NaN/Infinity tokens, which other readers reject): non-finite numbers become null."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


class RunRecorder:
    """Appends one JSON record per round and writes the summary and plots at the end;
    optional trackers (TensorBoard, MLflow) receive the same records."""

    def __init__(self, out_dir: Path, trackers: Sequence["Tracker"] = ()) -> None:
        self.out_dir = Path(out_dir)
        self.trackers = list(trackers)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rounds_path = self.out_dir / "rounds.jsonl"
        # A fresh run starts the file with its first record (a run refused before round 1 writes nothing);
        # a resumed run keeps it until :meth:`restore` rewrites it from a checkpoint.
        self.started = False
        self.records: list[dict[str, Any]] = []

    def restore(self, records: list[dict[str, Any]]) -> None:
        """Start from the records of a checkpoint (a resumed run): rounds.jsonl holds exactly them."""
        self.records, self.started = list(records), True
        self.rounds_path.write_text("".join(to_json(r) + "\n" for r in self.records))

    def record(self, record: dict[str, Any]) -> None:
        """Append one round's record (flushed immediately)."""
        self.records.append(record)
        with self.rounds_path.open("a" if self.started else "w") as f:
            self.started = True
            f.write(to_json(record) + "\n")
        for tracker in self.trackers:
            tracker.log_round(record)

    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json and the curves SVG; return the summary."""
        last = self.records[-1] if self.records else {}
        summary = {
            "rounds": len(self.records),
            "final_test_acc": last.get("test_acc"),
            "final_test_loss": last.get("test_loss"),
            "best_test_acc": max((r["test_acc"] for r in self.records), default=None),
            "bytes_up_total": sum(r["bytes_up"] for r in self.records),
            "bytes_down_total": sum(r["bytes_down"] for r in self.records),
            "failures_total": sum(len(r["failures"]) for r in self.records),
            "rejected_total": sum(len(r["rejected"]) for r in self.records),
            **task_metrics(self.records),
            **extra,
        }
        (self.out_dir / "summary.json").write_text(to_json(summary, indent=2))
        if self.records:
            plot_curves(self.records, self.out_dir / "curves.svg")
        for tracker in self.trackers:
            tracker.finish(summary)
        return summary
