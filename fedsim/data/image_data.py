"""The in-memory dataset type shared by every loader: normalised NCHW float32 arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageData:
    """Train/test split of an image classification dataset, normalised, NCHW float32."""

    name: str
    x_train: np.ndarray  # float32 (N, C, H, W): (pixel/255 - mean) / std per channel
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    groups: np.ndarray | None = None  # int64 (N,): the natural owner of each training example (FEMNIST's writer), if any

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        """Map normalised images, shaped (..., C, H, W), back to pixel units clipped to [0, 1]."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.clip(np.asarray(x, dtype=np.float32) * std + mean, 0.0, 1.0)


def from_uint8(
    name: str,
    x_train_u8: np.ndarray,
    y_train: np.ndarray,
    x_test_u8: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
) -> ImageData:
    """Build an ``ImageData`` from uint8 images shaped (N, H, W) or (N, C, H, W).

    Per-channel mean and std are measured on the train split only and applied to both.
    """
    x_train_u8 = _as_nchw(x_train_u8, f"{name} x_train")
    x_test_u8 = _as_nchw(x_test_u8, f"{name} x_test")
    if x_train_u8.shape[1:] != x_test_u8.shape[1:]:
        raise ValueError(
            f"{name}: train images are {x_train_u8.shape[1:]} but test images are "
            f"{x_test_u8.shape[1:]} (C, H, W)"
        )
    y_train = _as_labels(y_train, len(x_train_u8), num_classes, f"{name} y_train")
    y_test = _as_labels(y_test, len(x_test_u8), num_classes, f"{name} y_test")
    mean, std = _channel_stats(x_train_u8)
    return ImageData(
        name=name,
        x_train=_normalise(x_train_u8, mean, std),
        y_train=y_train,
        x_test=_normalise(x_test_u8, mean, std),
        y_test=y_test,
        num_classes=num_classes,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )


def _as_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """Validate a uint8 image array and give it a channel axis if it has none."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 pixels, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or len(x) == 0 or 0 in x.shape[1:]:
        raise ValueError(f"{what}: expected non-empty (N, H, W) or (N, C, H, W) images, got shape {x.shape}")
    return x


def _as_labels(y: np.ndarray, n: int, num_classes: int, what: str) -> np.ndarray:
    """Validate integer class labels in [0, num_classes) and return them as int64."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{what}: expected shape ({n},) to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what}: expected integer labels, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{what}: labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std in [0, 1] units, from 256-bin pixel histograms."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[1]):
        hist = np.bincount(x[:, c].ravel(), minlength=256) / x[:, c].size
        m = float(hist @ levels)
        mean.append(m)
        std.append(float(np.sqrt(hist @ (levels - m) ** 2)))
    std_arr = np.asarray(std)
    return np.asarray(mean), np.where(std_arr > 0, std_arr, 1.0)  # constant channel: only centre it


def _normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x/255 - mean)/std per channel, as float32, without float64 temporaries."""
    out = x.astype(np.float32)
    out *= (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    out -= (mean / std).astype(np.float32)[:, None, None]
    return out
