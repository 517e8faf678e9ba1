"""Atomic checkpoints of a run, so a killed run resumes exactly where it stopped.

A checkpoint holds everything the next rounds depend on: the global state, every
client's persistent state, the server-side components' state (strategy, defense,
privacy observer), and the round records so far. Random draws derive from
(seed, round, client), so no generator state needs saving. Files are written to a
temporary name, flushed and renamed; the last ``keep`` checkpoints are kept so a
corrupt newest one falls back to the one before.

Client states live beside the round files, one file per client and version
(``clients/<id>_v<version>.pt``); a round file names the file of each client, so a
checkpoint writes only the states written since the last one, and files no kept
checkpoint names are deleted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedsim.state import Tensors

log = logging.getLogger("fedsim")

# Config fields that steer how a run executes, not what it computes: a resume may change them.
RUN_CONTROL_KEYS = ("resume", "checkpoint_every", "backend", "verbose", "progress", "tracking", "client_timeout_s", "min_clients",
                    "client_state_memory_mb")
NUMBERS_BACKEND_KEYS = ("client_threads", "vectorize")  # ...except these backend fields, which change the numbers (threads, float order)
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
    client_states: Mapping[int, dict[str, Tensors]]  # loaded lazily, one client at a time
    components: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]


CLIENT_FILE = re.compile(r"^(\d+)_v(\d+)\.pt$")


class StoredClientStates(Mapping[int, dict[str, Tensors]]):
    """The client states a round file names, read (weights only) from ``folder`` when asked for."""

    def __init__(self, folder: Path, files: Mapping[int, str]) -> None:
        self.folder, self.files = folder, dict(files)
        for cid, name in self.files.items():
            match = CLIENT_FILE.match(str(name))
            if match is None or int(match.group(1)) != cid:
                raise ValueError(f"client {cid}: {name!r} is not a client-state file name")

    def version(self, client_id: int) -> int:
        """The version of the client's state this checkpoint holds."""
        return int(CLIENT_FILE.match(self.files[client_id]).group(2))

    def __getitem__(self, client_id: int) -> dict[str, Tensors]:
        return torch.load(self.folder / self.files[client_id], map_location="cpu", weights_only=True)

    def __iter__(self) -> Iterator[int]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def read_checkpoint(path: Path) -> Checkpoint:
    """One round file (weights-only unpickling), its client states read from beside it when asked for."""
    fields = torch.load(path, map_location="cpu", weights_only=True)
    fields["client_states"] = StoredClientStates(Path(path).parent / "clients", fields["client_states"])
    return Checkpoint(**fields)


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

    def save(self, checkpoint: Checkpoint, versions: Mapping[int, int] | None = None) -> Path:
        """Write ``checkpoint`` atomically; drop all but the newest ``keep``.

        ``versions``: each client state's version (a store's write count); a state whose file of that
        version a kept checkpoint already names is not written again (a leftover file of a killed run
        is). Without it every state is written, as version ``round``.
        """
        clients = self.folder / "clients"
        clients.mkdir(parents=True, exist_ok=True)
        named = self.named_client_files()
        written = set().union(*named.values())
        files = {}
        for cid, entries in checkpoint.client_states.items():
            files[cid] = f"{int(cid)}_v{checkpoint.round if versions is None else versions[cid]}.pt"
            if versions is None or files[cid] not in written:
                atomic_save(entries, clients / files[cid])
        path = self.folder / f"round_{checkpoint.round:06d}.pt"
        atomic_save({**vars(checkpoint), "client_states": files}, path)
        for old in self.paths()[self.keep :]:
            old.unlink()
        kept = set(files.values()).union(*(names for p, names in named.items() if p != path and p.exists()))
        for stale in clients.glob("*.pt"):
            if stale.name not in kept:
                stale.unlink()
        return path

    def named_client_files(self) -> dict[Path, set[str]]:
        """Each kept round file's client-state file names (an unreadable round file names none)."""
        named: dict[Path, set[str]] = {}
        for kept in self.paths():
            try:
                named[kept] = set(torch.load(kept, map_location="cpu", weights_only=True)["client_states"].values())
            except Exception:  # an unreadable round file names nothing worth keeping
                named[kept] = set()
        return named

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
                checkpoint = read_checkpoint(path)
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


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, flushed, then renamed over ``path``."""
    tmp = path.with_suffix(".pt.tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
