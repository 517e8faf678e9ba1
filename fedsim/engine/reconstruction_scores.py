"""Scoring a reconstructed batch against the true one, and the true-vs-reconstructed PNG grid.

Images are compared in pixel units ([0, 1], after denormalising), per image, after
matching each reconstruction to a true image (Hungarian assignment on MSE), because
gradients do not reveal the order of a batch.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PSNR_CAP_DB = 100.0  # an exact reconstruction has infinite PSNR; recorded as this cap


def match_order(true_px: np.ndarray, rec_px: np.ndarray) -> np.ndarray:
    """Index ``order`` such that ``rec_px[order[i]]`` is the reconstruction paired with ``true_px[i]``."""
    cost = ((true_px[:, None] - rec_px[None]) ** 2).reshape(len(true_px), len(rec_px), -1).mean(-1)
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def psnr(true_px: np.ndarray, rec_px: np.ndarray) -> float:
    """PSNR in dB of one image pair in [0, 1] (capped at ``PSNR_CAP_DB``)."""
    if np.array_equal(true_px, rec_px):
        return PSNR_CAP_DB
    return min(float(peak_signal_noise_ratio(true_px, rec_px, data_range=1.0)), PSNR_CAP_DB)


def ssim(true_px: np.ndarray, rec_px: np.ndarray) -> float:
    """Gaussian-window SSIM (sigma 1.5, Wang et al. 2004) of one (C, H, W) pair in [0, 1].

    Images smaller than the 11x11 Gaussian window (8x8 digits) use the largest odd
    uniform window that fits.
    """
    side = min(true_px.shape[-2:])
    if side >= 11:
        window = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    else:
        window = {"win_size": side if side % 2 else side - 1}
    return float(structural_similarity(true_px, rec_px, data_range=1.0, channel_axis=0, **window))


def label_accuracy(true_y: np.ndarray, rec_y: np.ndarray) -> float:
    """Share of the true labels recovered, as multisets (label order carries no information)."""
    overlap = Counter(true_y.tolist()) & Counter(rec_y.tolist())
    return sum(overlap.values()) / len(true_y)


def score_batch(true_px: np.ndarray, true_y: np.ndarray, rec_px: np.ndarray, rec_y: np.ndarray) -> dict[str, float]:
    """Mean PSNR/SSIM/MSE over matched image pairs, per-image PSNRs, and label accuracy."""
    if true_px.shape != rec_px.shape or true_y.shape != rec_y.shape:
        raise ValueError(f"reconstruction {rec_px.shape}/{rec_y.shape} does not match the batch {true_px.shape}/{true_y.shape}")
    order = match_order(true_px, rec_px)
    pairs = [(true_px[i], rec_px[j]) for i, j in enumerate(order)]
    psnrs = [psnr(t, r) for t, r in pairs]
    return {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean([ssim(t, r) for t, r in pairs])),
        "mse": float(np.mean([((t - r) ** 2).mean() for t, r in pairs])),
        "label_acc": label_accuracy(true_y, rec_y),
        "psnr_per_image": psnrs,
    }


def save_grid(true_px: np.ndarray, rec_px: np.ndarray, path: Path, title: str) -> None:
    """A two-row PNG: true images on top, their matched reconstructions below, PSNR under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = match_order(true_px, rec_px)
    n = len(true_px)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n + 0.4, 3.6), squeeze=False)
    for i in range(n):
        for row, image in enumerate((true_px[i], rec_px[order[i]])):
            ax = axes[row][i]
            ax.imshow(image.transpose(1, 2, 0).squeeze(-1) if image.shape[0] == 1 else image.transpose(1, 2, 0),
                      cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1][i].set_xlabel(f"{psnr(true_px[i], rec_px[order[i]]):.1f} dB", fontsize=8)
    axes[0][0].set_ylabel("true")
    axes[1][0].set_ylabel("reconstructed")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
