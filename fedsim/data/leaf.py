"""FEMNIST from LEAF's on-disk JSON (Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018).

LEAF's preprocessing writes ``all_data/all_data_<k>.json`` files, each ``{"users": [...],
"num_samples": [...], "user_data": {user: {"x": [[784 floats]], "y": [labels]}}}``: 28x28 images as
floats in [0, 1] (LEAF's values as stored, background 1.0) and 62 classes (10 digits, 26 upper- and
26 lower-case letters). Nothing is downloaded: ``root`` is the folder holding ``all_data/`` (or
``all_data/`` itself). Each writer's examples are split into train and test as LEAF's sample-based
split does (``test_fraction`` of each writer's examples, at least one kept for training, seeded);
the training examples remember their writer (``ImageData.groups``) for ``partition=natural``.
JSON holds no code; every field is checked before use.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.image_data import ImageData, from_uint8
from fedsim.params import check_range

FEMNIST_CLASSES = 62
_PIXELS = 28 * 28


def femnist(root: str, test_fraction: float = 0.1, seed: int = 0) -> ImageData:
    """FEMNIST by writer from LEAF's ``all_data/*.json`` under ``root``."""
    check_range("dataset.test_fraction", test_fraction, 0, 1, low_open=True, high_open=True)
    files = _json_files(Path(root).expanduser())
    rng = np.random.default_rng(seed)
    train_x, train_y, train_w, test_x, test_y = [], [], [], [], []
    writer = 0
    for path in files:
        for x, y in _writers(path):
            order = rng.permutation(len(y))
            held = min(len(y) - 1, math.floor(test_fraction * len(y)))
            test, train = order[:held], order[held:]
            train_x.append(x[train]), train_y.append(y[train]), train_w.append(np.full(len(train), writer))
            test_x.append(x[test]), test_y.append(y[test])
            writer += 1
    if writer == 0:
        raise ValueError(f"femnist: {root}: the JSON files hold no writer")
    data = from_uint8("femnist", np.concatenate(train_x), np.concatenate(train_y), _stack(test_x), np.concatenate(test_y),
                      FEMNIST_CLASSES)
    return dataclasses.replace(data, groups=np.concatenate(train_w).astype(np.int64))


def _json_files(base: Path) -> list[Path]:
    for folder in (base / "all_data", base):
        files = sorted(folder.glob("*.json"))
        if files:
            return files
    raise FileNotFoundError(f"femnist: no LEAF JSON files in {base / 'all_data'} or {base} "
                            "(expected all_data/all_data_<k>.json from LEAF's preprocessing)")


def _writers(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each writer's (uint8 images (n, 28, 28), labels) from one LEAF file, in the file's user order."""
    try:
        blob: Any = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a LEAF JSON file ({exc})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("users"), list) or not isinstance(blob.get("user_data"), dict):
        raise ValueError(f"{path}: not a LEAF JSON file (expected users and user_data)")
    out = []
    for user in blob["users"]:
        record = blob["user_data"].get(user) if isinstance(user, str) else None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: user {user!r} has no user_data entry")
        x, y = np.asarray(record.get("x"), dtype=np.float64), np.asarray(record.get("y"))
        if x.ndim != 2 or x.shape[1] != _PIXELS or len(x) == 0 or y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"{path}: user {user!r}: expected x of shape (n, {_PIXELS}) and n integer labels, "
                             f"got {x.shape} and {y.shape}")
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError(f"{path}: user {user!r}: pixel values must lie in [0, 1]")
        out.append((np.rint(x * 255).astype(np.uint8).reshape(-1, 28, 28), y.astype(np.int64)))
    return out


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, 28, 28), np.uint8)
