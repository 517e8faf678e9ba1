"""Atomic checkpoints of a run, so a killed run resumes exactly where it stopped.

A checkpoint holds everything the next rounds depend on: the global state, every
client's persistent state, the server-side components' state (strategy, defense,
privacy observer), and the round records so far. Random draws derive from
(seed, round, client), so no generator state needs saving. Files are written to a
temporary name, flushed and renamed; the last ``keep`` checkpoints are kept so a
corrupt newest one falls back to the one before.
"""

from __future__ import annotations

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
NUMBERS_BACKEND_KEYS = ("client_threads",)  # ...except these backend fields, which change the numbers (torch threads)
HORIZON_KEYS = ("rounds", "strategy.rounds")  # how long the run is: a resume may extend it


def numbers_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines the run's numbers, flattened to dotted keys."""
    relevant = {k: v for k, v in cfg.items() if k not in RUN_CONTROL_KEYS}
    relevant["backend"] = {k: v for k, v in (cfg.get("backend") or {}).items() if k in NUMBERS_BACKEND_KEYS}
    return flatten(relevant)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved: dict[str, Any], cfg: dict[str, Any], done_rounds: int) -> list[str]:
    """``field: old -> new`` for every numbers-relevant field a resume under ``cfg`` would change.

    A longer (or equal) horizon is allowed: it is how a finished run is extended. Not when
    ``dp.epsilon`` is set, since that budget is spread over the configured rounds.
    """
    now = numbers_config(cfg)
    extendable = (cfg.get("dp") or {}).get("epsilon") is None and int(cfg["rounds"]) >= done_rounds
    return [
        f"{key}: {saved.get(key, '(unset)')} -> {now.get(key, '(unset)')}"
        for key in sorted(set(saved) | set(now))
        if saved.get(key) != now.get(key) and not (extendable and key in HORIZON_KEYS)
    ]


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
    config: dict[str, Any]  # :func:`numbers_config` of the run, so a resume under another config is refused by name
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

    def load_latest(self, cfg: dict[str, Any]) -> Checkpoint | None:
        """The newest sound checkpoint of a run configured as ``cfg`` (None if there is none).

        A corrupt or truncated file, one written by an older fedsim, one whose round is outside
        [0, rounds] or whose tensors are not finite, is reported and skipped in favour of the one
        before it; if files exist but none is usable, :class:`CheckpointError` says why. A
        checkpoint of a run with different numbers-relevant fields is refused, naming them.
        """
        problems = []
        for path in self.paths():
            try:
                checkpoint = Checkpoint(**torch.load(path, map_location="cpu", weights_only=True))
                problem = soundness_problem(checkpoint, int(cfg["rounds"]))
            except Exception as exc:  # any unreadable file: say which and why, try the previous one
                problem = load_failure(exc)
            if problem is not None:
                problems.append(f"{path.name}: {problem}")
                log.warning("checkpoint %s is unusable (%s); trying the previous one", path, problem)
                continue
            changes = config_changes(checkpoint.config, cfg, checkpoint.round)
            if changes:
                raise CheckpointError(f"{path} was written by a run with a different config ({'; '.join(changes)}); refusing to resume")
            return checkpoint
        if problems:
            raise CheckpointError("no usable checkpoint in " + str(self.folder) + ": " + "; ".join(problems))
        return None


def soundness_problem(checkpoint: Checkpoint, rounds: int) -> str | None:
    """Why a checkpoint that loaded must still not be run: an absurd round, or a non-finite tensor."""
    if not isinstance(checkpoint.round, int) or not 0 <= checkpoint.round <= rounds:
        return f"round={checkpoint.round!r} is outside [0, rounds={rounds}]"
    tensors = [("global_state", checkpoint.global_state)]
    tensors += [(f"client {cid}", entries) for cid, entries in checkpoint.client_states.items()]
    for where, tree in tensors:
        for name, leaf in flatten(tree).items():
            if isinstance(leaf, dict):
                continue  # an empty record holds no tensor
            if not isinstance(leaf, torch.Tensor) or (leaf.is_floating_point() and not bool(torch.isfinite(leaf).all())):
                return f"{where}: {name} is not a finite tensor"
    return None
