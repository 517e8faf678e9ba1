"""Atomic checkpoints of a run, so a killed run resumes exactly where it stopped.

A checkpoint holds everything the next rounds depend on: the global state, every
client's persistent state, the server-side components' state (strategy, defense,
privacy observer), and the round records so far. Random draws derive from
(seed, round, client), so no generator state needs saving. Files are written to a
temporary name, flushed and renamed; the last ``keep`` checkpoints are kept so a
corrupt newest one falls back to the one before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedsim.state import Tensors

log = logging.getLogger("fedsim")

# Config fields that steer how a run executes, not what it computes: a resume may change them.
RUN_CONTROL_KEYS = ("resume", "checkpoint_every", "backend", "verbose", "progress", "tracking", "client_timeout_s", "min_clients")


def config_fingerprint(cfg: dict[str, Any]) -> str:
    """A hash of everything in the resolved config that determines the run's numbers."""
    relevant = {k: v for k, v in cfg.items() if k not in RUN_CONTROL_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_failure(exc: Exception) -> str:
    """One line saying why ``torch.load`` refused a file. The weights-only unpickler names the
    offending operation or global (e.g. a planted ``posix.system``) between paragraphs of advice,
    which are dropped."""
    text = str(exc)
    if text.startswith("Weights only load failed"):
        for marker in ("WeightsUnpickler error:", "from a trusted source."):
            text = text.split(marker, 1)[-1]
        text = "refused by the weights-only loader: " + text.split("Check the documentation", 1)[0]
    return f"{type(exc).__name__}: {' '.join(text.split())}"


class CheckpointError(RuntimeError):
    """No usable checkpoint could be loaded."""


@dataclass
class Checkpoint:
    """The state of a run after ``round`` rounds."""

    round: int
    fingerprint: str  # the run's config, so a resume under another config is refused
    global_state: Tensors
    client_states: dict[int, dict[str, Tensors]]
    components: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]


class CheckpointStore:
    """Checkpoints of one run in ``folder`` (``round_000012.pt``...)."""

    def __init__(self, folder: Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: must be >= 1")
        self.folder = Path(folder)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Existing checkpoint files, newest first."""
        return sorted(self.folder.glob("round_*.pt"), reverse=True)

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write ``checkpoint`` atomically; drop all but the newest ``keep``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"round_{checkpoint.round:06d}.pt"
        tmp = path.with_suffix(".pt.tmp")
        with tmp.open("wb") as f:
            torch.save(vars(checkpoint), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for old in self.paths()[self.keep :]:
            old.unlink()
        return path

    def load_latest(self, fingerprint: str) -> Checkpoint | None:
        """The newest checkpoint that loads (None if there is none).

        A corrupt or truncated file is reported and skipped in favour of the one
        before it; if files exist but none loads, :class:`CheckpointError` says why.
        """
        problems = []
        for path in self.paths():
            try:
                checkpoint = Checkpoint(**torch.load(path, map_location="cpu", weights_only=True))
            except Exception as exc:  # any unreadable file: say which and why, try the previous one
                problems.append(f"{path.name}: {load_failure(exc)}")
                log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, load_failure(exc))
                continue
            if checkpoint.fingerprint != fingerprint:
                raise CheckpointError(f"{path} was written by a run with a different config; refusing to resume")
            return checkpoint
        if problems:
            raise CheckpointError("no readable checkpoint in " + str(self.folder) + ": " + "; ".join(problems))
        return None
