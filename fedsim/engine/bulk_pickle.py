"""Pickling a chunk of messages with its bulk bytes in a shared-memory file (Ray actors on this machine).

Ray moves a task's arguments and results over gRPC or through its object store: here about 10 ms
for a chunk carrying a 1.3 MB model, more than its clients' training. Between processes of one
machine fedsim pickles a chunk itself and writes the data of every Flower ``Array`` of at least
:data:`BULK_BYTES` into one file in ``/dev/shm``; the pickle holds (file, offset, length) in its
place (a pickler's ``reducer_override`` never sees plain ``bytes``, so the arrays are reduced). A
round's payload, shared by all its messages, is written once for every chunk of the round (the same
data object is written once per writer).

Only fedsim's own processes read these pickles (the driver and its actors, as Ray's own
pickles); a client's reply is still screened field by field on the server (:mod:`replies`).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Array

BULK_BYTES = 64 * 1024


SHM_FREE_BYTES = 4 * 2**30  # /dev/shm is used only with this much free (a container's default is 64 MB)


def bulk_folder() -> Path:
    """Shared memory where the system has it (Linux) with room to spare, else the temporary folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= SHM_FREE_BYTES:
        return shm
    return Path(tempfile.gettempdir())


def read_bulk(path: str, offset: int, length: int) -> bytes:
    """The bytes a :class:`BulkWriter` placed at ``offset`` of ``path``."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise EOFError(f"{path}: {len(data)} of {length} bytes at offset {offset}")
    return data


class BulkWriter:
    """Pickles objects, the data of their large Flower arrays written once into one file named ``<prefix>-<random>``."""

    def __init__(self, folder: Path, prefix: str) -> None:
        self.path = folder / f"{prefix}-{uuid4().hex}"
        self._file: io.BufferedWriter | None = None
        self._placed: dict[int, tuple[int, int]] = {}
        self._alive: list[bytes] = []  # the placed objects, so their ids stay theirs while this writer lives

    def dumps(self, obj: Any) -> bytes:
        out = io.BytesIO()
        _BulkPickler(out, self).dump(obj)
        if self._file is not None:
            self._file.flush()
        return out.getvalue()

    def place(self, data: bytes) -> tuple[str, int, int]:
        if id(data) not in self._placed:
            if self._file is None:
                self._file = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
            self._placed[id(data)] = (self._file.tell(), len(data))
            self._file.write(data)
            self._alive.append(data)
        return (str(self.path), *self._placed[id(data)])

    @property
    def used(self) -> bool:
        return self._file is not None

    def remove(self) -> None:
        """Close and delete the file (its readers have read it)."""
        if self._file is not None:
            self._file.close()
            self.path.unlink(missing_ok=True)
            self._file = None


class _BulkPickler(pickle.Pickler):
    def __init__(self, out: io.BytesIO, writer: BulkWriter) -> None:
        super().__init__(out, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer = writer

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Array and isinstance(obj.data, bytes) and len(obj.data) >= BULK_BYTES:
            return bulk_array, (obj.dtype, tuple(obj.shape), obj.stype, *self._writer.place(obj.data))
        return NotImplemented


def bulk_array(dtype: str, shape: tuple[int, ...], stype: str, path: str, offset: int, length: int) -> Array:
    """A Flower ``Array`` whose data a :class:`BulkWriter` placed in ``path``."""
    return Array(dtype=dtype, shape=shape, stype=stype, data=read_bulk(path, offset, length))


def remove_leftovers(folder: Path, prefix: str) -> None:
    """Delete every file of ``prefix`` (a dead actor's half-written replies)."""
    for path in folder.glob(f"{prefix}-*"):
        path.unlink(missing_ok=True)
