"""Flower's array wire format without numpy's generic file machinery.

A Flower ``Array`` of stype ``numpy.ndarray`` is an ``.npy`` file: a header (dtype, order,
shape) and the raw bytes. ``np.save``/``np.load`` rebuild and re-parse that header with
``ast.literal_eval`` for every array, which costs more than the training step of a small
model (about 0.1 ms per 4-tensor record each way). Here a header is written once per
(dtype, shape) and parsed once per distinct header bytes (both cached), and the payload is
read with ``np.frombuffer``. The bytes written are the ones ``np.save`` writes for a
C-contiguous array, and every array whose layout is anything but the plain case (another
header version, an object dtype, a length that does not match) goes through Flower's own
``Array.numpy()``, so a hostile reply is read exactly as Flower reads it, never trusted more.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

MAGIC_1_0 = b"\x93NUMPY\x01\x00"  # .npy version 1.0: a 2-byte little-endian header length follows
PREFIX = len(MAGIC_1_0) + 2


@lru_cache(maxsize=1024)
def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The .npy 1.0 header ``np.save`` writes for a C-contiguous array of this dtype descr and shape."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


@lru_cache(maxsize=1024)
def parsed_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of an .npy 1.0 header (magic included), by numpy's own safe parser."""
    out = io.BytesIO(header)
    np.lib.format.read_magic(out)
    return np.lib.format.read_array_header_1_0(out)


def direct_array(dtype: str, shape: tuple[int, ...], stype: str, data: bytes) -> Array:
    """``Array(dtype=..., shape=..., stype=..., data=...)`` without its argument dispatch (a tenth of the time):
    the object holds the very attributes Flower's constructor sets (checked once at import, else Flower's own)."""
    array = Array.__new__(Array)
    array.__dict__.update(_is_dirty=True, dtype=dtype, shape=shape, stype=stype, data=data)
    return array


_PROBE = ("float32", (2,), SType.NUMPY, bytes(8))
new_array = direct_array if vars(direct_array(*_PROBE)) == vars(Array(*_PROBE)) else Array


@lru_cache(maxsize=64)
def dtype_names(dtype: np.dtype) -> tuple[str, str]:
    """(the .npy header's descr, the name ``Array`` records) of a dtype: numpy derives both anew per call (5 us)."""
    return np.lib.format.dtype_to_descr(dtype), str(dtype)


def array_of(values: np.ndarray) -> Array:
    """A Flower ``Array`` holding ``values``, byte for byte what ``Array(values)`` holds for a C-contiguous array."""
    values = values if values.flags.c_contiguous else np.ascontiguousarray(values)  # (a 0-d array stays 0-d)
    if values.dtype.hasobject:
        return Array(values)  # Flower refuses it, as it should
    descr, name = dtype_names(values.dtype)
    data = b"".join((npy_header(descr, values.shape), values.data))  # one copy
    return new_array(name, values.shape, SType.NUMPY, data)


def numpy_of(array: Array) -> np.ndarray:
    """The values of a Flower ``Array``, as ``array.numpy()`` returns them (a writable array of its own)."""
    data = array.data
    if array.stype == SType.NUMPY and isinstance(data, bytes) and data[: len(MAGIC_1_0)] == MAGIC_1_0 and len(data) >= PREFIX:
        end = PREFIX + int.from_bytes(data[len(MAGIC_1_0) : PREFIX], "little")
        try:
            shape, fortran, dtype = parsed_header(data[:end])
        except ValueError:
            return array.numpy()  # a malformed header: Flower's reader raises its own error
        count = math.prod(shape)
        if not dtype.hasobject and len(data) - end == count * dtype.itemsize:
            return np.frombuffer(data, dtype, count, end).reshape(shape, order="F" if fortran else "C").copy()
    return array.numpy()


def to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    """Tensors -> a Flower ArrayRecord (copied to CPU). Filled item by item: ``ArrayRecord(array_dict=...)``
    would build every Array a second time."""
    record = ArrayRecord()
    for k, v in tensors.items():
        record[k] = array_of(v.detach().cpu().numpy())
    return record


def from_record(record: ArrayRecord, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A Flower ArrayRecord -> tensors on ``device``."""
    return {k: torch.from_numpy(numpy_of(a)).to(device) for k, a in record.items()}
