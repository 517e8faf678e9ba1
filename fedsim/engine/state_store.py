"""The server-hosted client states: in memory up to a budget, the least recently used spilled to disk.

Every stateful strategy or codec (DGC residuals, SCAFFOLD controls, HyperFL's private layers) keeps one
state per client that has ever taken part, so a federation of 10,000 DGC clients holds ~12.7 GB. The
store keeps the most recently written states in memory up to ``budget_bytes`` and writes the others
as raw tensor bytes to ``spill_dir`` (dtype and shape kept in memory; nothing is unpickled), reading
them back when a client is sampled again. Each write bumps the client's version, which is what lets a
checkpoint write only the states that changed since the last one.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.state import from_record, record_nbytes, to_record

Entries = dict[str, ArrayRecord]  # one client's state entries (``state.<key>`` -> its tensors)
Layout = list[tuple[str, list[tuple[str, str, tuple[int, ...]]]]]  # entry -> [(tensor, numpy dtype, shape)]


class ClientStateStore(MutableMapping[int, Entries]):
    """Client id -> state entries, holding at most ``budget_bytes`` of them in memory (None: no limit)."""

    def __init__(self, spill_dir: Path, budget_bytes: int | None = None) -> None:
        self.spill_dir = Path(spill_dir)
        self.budget_bytes = budget_bytes
        self.versions: dict[int, int] = {}  # client id -> how many times its state was written
        self._memory: OrderedDict[int, Entries] = OrderedDict()
        self._sizes: dict[int, int] = {}
        self._memory_bytes = 0
        self._spilled: dict[int, Layout] = {}

    @property
    def memory_bytes(self) -> int:
        """Payload bytes of the states held in memory now."""
        return self._memory_bytes

    @property
    def spilled(self) -> int:
        """How many clients' states are on disk now."""
        return len(self._spilled)

    def __setitem__(self, client_id: int, entries: Entries) -> None:
        self._forget(client_id)
        self._memory[client_id] = entries
        self._sizes[client_id] = sum(record_nbytes(r) for r in entries.values())
        self._memory_bytes += self._sizes[client_id]
        self.versions[client_id] = self.versions.get(client_id, 0) + 1
        self._evict(keep=client_id)

    def restore(self, client_id: int, entries: Entries, version: int) -> None:
        """Put back a state read from a checkpoint, at the version it was saved with."""
        self[client_id] = entries
        self.versions[client_id] = version

    def __getitem__(self, client_id: int) -> Entries:
        if client_id in self._memory:
            self._memory.move_to_end(client_id)
            return self._memory[client_id]
        if client_id in self._spilled:
            return self._read(client_id)
        raise KeyError(client_id)

    def __delitem__(self, client_id: int) -> None:
        if client_id not in self._memory and client_id not in self._spilled:
            raise KeyError(client_id)
        self._forget(client_id)
        self.versions.pop(client_id, None)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted({*self._memory, *self._spilled}))

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._memory or client_id in self._spilled

    def close(self) -> None:
        """Delete the spilled files (the states are in the checkpoints if they are needed later)."""
        shutil.rmtree(self.spill_dir, ignore_errors=True)
        self._spilled.clear()

    def _forget(self, client_id: int) -> None:
        if client_id in self._memory:
            del self._memory[client_id]
            self._memory_bytes -= self._sizes.pop(client_id)
        if self._spilled.pop(client_id, None) is not None:
            shutil.rmtree(self._folder(client_id), ignore_errors=True)

    def _evict(self, keep: int) -> None:
        """Spill the least recently used states (never ``keep``, the one just written) until within budget."""
        if self.budget_bytes is None:
            return
        for client_id in list(self._memory):
            if self._memory_bytes <= self.budget_bytes:
                return
            if client_id != keep:
                self._write(client_id, self._memory.pop(client_id))
                self._memory_bytes -= self._sizes.pop(client_id)

    def _folder(self, client_id: int) -> Path:
        return self.spill_dir / str(int(client_id))

    def _write(self, client_id: int, entries: Entries) -> None:
        folder = self._folder(client_id)
        folder.mkdir(parents=True, exist_ok=True)
        layout: Layout = []
        for i, (key, record) in enumerate(entries.items()):
            tensors = from_record(record)
            for j, t in enumerate(tensors.values()):
                np.ascontiguousarray(t.numpy()).tofile(folder / f"{i}_{j}.bin")
            layout.append((key, [(name, t.numpy().dtype.str, tuple(t.shape)) for name, t in tensors.items()]))
        self._spilled[client_id] = layout

    def _read(self, client_id: int) -> Entries:
        folder, entries = self._folder(client_id), {}
        for i, (key, tensors) in enumerate(self._spilled[client_id]):
            entries[key] = to_record({
                name: torch.from_numpy(np.fromfile(folder / f"{i}_{j}.bin", dtype=np.dtype(dtype)).reshape(shape))
                for j, (name, dtype, shape) in enumerate(tensors)
            })
        return entries
