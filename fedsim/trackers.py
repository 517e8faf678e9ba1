"""Optional experiment trackers fed from the round records: TensorBoard event files and MLflow.

Both are off by default (``tracking.tensorboard``, ``tracking.mlflow``) and local: TensorBoard
writes event files into the run folder, MLflow logs to a local file store. rounds.jsonl and
summary.json stay the source of truth; trackers only mirror their numbers.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from fedsim.extras import optional_import



def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a round record or summary, nested dicts flattened with ``/``
    (``detection/precision``); per-client entries and lists are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("round", "clients"):
            continue
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as dotted keys -> strings (``strategy._target_``, ``partition.alpha``)."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


class Tracker(ABC):
    """A sink for one run's round records and summary."""

    @abstractmethod
    def log_round(self, record: dict[str, Any]) -> None:
        """Mirror one round's record."""

    @abstractmethod
    def finish(self, summary: dict[str, Any]) -> None:
        """Mirror the summary and close."""


class TensorBoardTracker(Tracker):
    """Scalars per round (x axis: round) in TensorBoard event files under ``log_dir``."""

    def __init__(self, log_dir: Path) -> None:
        SummaryWriter = optional_import("tensorboardX", "tracking.tensorboard").SummaryWriter
        self.writer = SummaryWriter(logdir=str(log_dir))

    def log_round(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=int(record["round"]))
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        for name, value in scalars(summary).items():
            self.writer.add_scalar(f"summary/{name}", value, global_step=0)
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run per simulation in a local file store (no server, no database): the config
    as params, round metrics with step = round, the summary as final metrics."""

    def __init__(self, store: Path, experiment: str, run_name: str, cfg: dict[str, Any]) -> None:
        MlflowClient = optional_import("mlflow.tracking", "tracking.mlflow").MlflowClient
        self.conflict = optional_import("mlflow.exceptions", "tracking.mlflow").MlflowException
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's documented opt-in for file stores
        self.client = MlflowClient(tracking_uri=Path(store).resolve().as_uri())
        self.run_id = self.client.create_run(self.experiment_id(experiment), run_name=run_name).info.run_id
        for key, value in flat_params(cfg).items():
            self.client.log_param(self.run_id, key, value[:6000])

    def experiment_id(self, name: str) -> str:
        """The experiment's id, creating it unless a parallel job of the sweep just did."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except self.conflict:  # created meanwhile by another job sharing the store
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        return found.experiment_id

    def log_round(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.client.log_metric(self.run_id, name, value, step=int(record["round"]))

    def finish(self, summary: dict[str, Any]) -> None:
        for name, value in scalars(summary).items():
            self.client.log_metric(self.run_id, f"summary/{name}", value)
        self.client.set_terminated(self.run_id)


def run_name(out_dir: Path) -> str:
    """A tracker's name for the run: the last two parts of its folder (``TIME/N`` in a sweep)."""
    return "/".join(Path(out_dir).resolve().parts[-2:])


def trackers_for(cfg: dict[str, Any], out_dir: Path) -> list[Tracker]:
    """The trackers ``cfg['tracking']`` switches on (none when the block is absent)."""
    tracking = cfg.get("tracking") or {}
    trackers: list[Tracker] = []
    if tracking.get("tensorboard"):
        trackers.append(TensorBoardTracker(Path(out_dir) / "tensorboard"))
    if tracking.get("mlflow"):
        store = Path(tracking.get("mlflow_dir") or Path(out_dir) / "mlruns")
        trackers.append(MLflowTracker(store, str(tracking.get("mlflow_experiment", "fedsim")), run_name(out_dir), cfg))
    return trackers
