"""Loaders for standard datasets already on local disk. Nothing is ever downloaded.

* ``mnist`` / ``fashion_mnist``: the four IDX files (raw or ``.gz``) in ``root``,
  ``root/raw`` or torchvision's ``root/MNIST/raw`` (``root/FashionMNIST/raw``).
* ``cifar10`` / ``cifar100``: the python pickle batches in ``root/cifar-10-batches-py``
  (``root/cifar-100-python``: ``train`` and ``test``), or ``root`` pointing at that folder itself, read by an unpickler that builds nothing but what a
  batch holds (numpy arrays and dtypes, plus the dicts, lists, bytes, str and ints pickle
  makes itself): a file that names any other callable is refused before anything runs.
"""

from __future__ import annotations

import codecs
import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.image_data import ImageData, from_uint8
from fedsim.params import check_choice

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR100_DIR = "cifar-100-python"
_CIFAR100_FILES = ("train", "test")


def mnist(root: str) -> ImageData:
    """MNIST (60k/10k, (N, 1, 28, 28)) from IDX files under ``root``."""
    return _idx_dataset("mnist", "MNIST", root)


def fashion_mnist(root: str) -> ImageData:
    """Fashion-MNIST (60k/10k, (N, 1, 28, 28)) from IDX files under ``root``."""
    return _idx_dataset("fashion_mnist", "FashionMNIST", root)


def cifar10(root: str) -> ImageData:
    """CIFAR-10 (50k/10k, (N, 3, 32, 32)) from the python pickle batches under ``root``."""
    base = Path(root).expanduser()
    folder = _find_folder("cifar10", base, [base, base / _CIFAR_DIR], [(name,) for name in _CIFAR_FILES])
    train = [_read_cifar_batch(folder / name) for name in _CIFAR_FILES[:-1]]
    x_test, y_test = _read_cifar_batch(folder / _CIFAR_FILES[-1])
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return from_uint8("cifar10", x_train, y_train, x_test, y_test, 10)


def cifar100(root: str, labels: str = "fine") -> ImageData:
    """CIFAR-100 (50k/10k, (N, 3, 32, 32)) from the python pickle files ``train`` and ``test`` under
    ``root`` (its ``cifar-100-python/`` folder, or that folder itself), through the same restricted
    unpickler as CIFAR-10; ``labels=fine`` (100 classes, default) or ``coarse`` (the 20 superclasses)."""
    check_choice("dataset.labels", labels, ("fine", "coarse"))
    base = Path(root).expanduser()
    folder = _find_folder("cifar100", base, [base, base / _CIFAR100_DIR], [(name,) for name in _CIFAR100_FILES])
    key = f"{labels}_labels".encode()
    x_train, y_train = _read_cifar_batch(folder / "train", key)
    x_test, y_test = _read_cifar_batch(folder / "test", key)
    return from_uint8("cifar100", x_train, y_train, x_test, y_test, 100 if labels == "fine" else 20)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (raw or ``.gz``): magic ``00 00 <dtype> <ndim>``, big-endian dims, data."""
    path = Path(path)
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES or data[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX dims {dims} need {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_dataset(name: str, torchvision_dir: str, root: str) -> ImageData:
    """Find and read the four IDX files of an MNIST-format dataset."""
    base = Path(root).expanduser()
    candidates = [base, base / "raw", base / torchvision_dir / "raw"]
    alternatives = [(f, f + ".gz") for f in _IDX_FILES]
    folder = _find_folder(name, base, candidates, alternatives)
    x_train, y_train, x_test, y_test = (_read_idx_member(folder, alts) for alts in alternatives)
    return from_uint8(name, x_train, y_train, x_test, y_test, 10)


def _read_idx_member(folder: Path, alternatives: tuple[str, ...]) -> np.ndarray:
    """Read the first existing file of ``alternatives`` (raw name, then ``.gz``) in ``folder``."""
    path = next(folder / a for a in alternatives if (folder / a).is_file())
    return read_idx(path)


def _find_folder(name: str, root: Path, candidates: list[Path], alternatives: list[tuple[str, ...]]) -> Path:
    """The first candidate folder holding every required file (any one of its alternatives)."""
    for folder in candidates:
        if all(any((folder / a).is_file() for a in alts) for alts in alternatives):
            return folder
    expected = ", ".join(" or ".join(alts) for alts in alternatives)
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"{name}: dataset files not found under root {str(root)!r}. Expected {expected} "
        f"in one of: {searched}. fedsim never downloads data; place the files there first."
    )


_NUMPY_CORE = ("numpy.core", "numpy._core")  # numpy 1 and numpy 2 names of one module
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array reconstructor (protocols 0-4)
_FROMBUFFER = np.zeros(0).__reduce_ex__(5)[0]  # and protocol 5's
_CIFAR_GLOBALS = {
    **{(f"{core}.multiarray", "_reconstruct"): _RECONSTRUCT for core in _NUMPY_CORE},
    **{(f"{core}.numeric", "_frombuffer"): _FROMBUFFER for core in _NUMPY_CORE},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 spells a bytes object
}


class CifarBatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 / CIFAR-100 batch and nothing else: only numpy's array and dtype
    reconstructors (and bytes' encoder) may be named; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        found = _CIFAR_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}: a CIFAR batch holds only numpy arrays, lists, bytes, str and ints")
        return found


def _read_cifar_batch(path: Path, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle batch as uint8 (N, 3, 32, 32) images (R, G, B planes) and its ``label_key`` labels
    (CIFAR-10: ``labels``; CIFAR-100: ``fine_labels`` or ``coarse_labels``)."""
    with path.open("rb") as f:
        try:
            batch = CifarBatchUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a CIFAR batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: not a CIFAR batch (expected a dict with b'data' and {label_key!r})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(
            f"{path}: expected uint8 data (N, 3072) and N labels, got {data.dtype} {data.shape} "
            f"and {len(labels)} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels
