"""Robust combines not in Flower: geometric median (RFA), centered clipping, FoolsGold.

Each is a ``combine`` the engine hands to the strategy in place of its own (docs/architecture.md);
centered clipping and FoolsGold keep server-side state across rounds (checkpointed).
"""

from __future__ import annotations

import math

import torch

from fedsim.defense import Defense
from fedsim.params import check_range
from fedsim.state import Tensors, stack_flat, unflatten
from fedsim.strategy import ClientUpdate, Combine


def geometric_median(points: torch.Tensor, weights: torch.Tensor, iterations: int, nu: float, tolerance: float = 1e-7) -> torch.Tensor:
    """Smoothed Weiszfeld: z <- sum_i b_i x_i / sum_i b_i, b_i = w_i / max(nu, ||z - x_i||), from the
    weighted mean, until z moves less than ``tolerance`` (relative) or after ``iterations`` steps."""
    z = (weights[:, None] * points).sum(0) / weights.sum()
    for _ in range(iterations):
        b = weights / torch.linalg.vector_norm(points - z, dim=1).clamp_min(nu)
        new = (b[:, None] * points).sum(0) / b.sum()
        moved = float(torch.linalg.vector_norm(new - z))
        z = new
        if moved <= tolerance * max(float(torch.linalg.vector_norm(z)), 1.0):
            break
    return z


class GeometricMedian(Defense):
    """Geometric median by smoothed Weiszfeld (Pillutla, Kakade, Harchaoui, "Robust Aggregation for
    Federated Learning" (RFA), IEEE TSP 2022): weights by example count, ``nu`` 1e-6, Weiszfeld steps
    until it settles (at most ``iterations``). RFA's code stops after a few steps (3-4), which from the
    mean is far from converged when outliers are far away; here the steps run to convergence, so the
    breakdown point is the geometric median's 1/2: less than half the weight cannot move it far."""

    def __init__(self, iterations: int = 200, nu: float = 1e-6) -> None:
        check_range("defense.iterations", iterations, low=1, integer=True)
        check_range("defense.nu", nu, low=0, low_open=True)
        self.iterations, self.nu = iterations, nu

    def combiner(self) -> Combine:
        def combine(updates: list[ClientUpdate]) -> Tensors:
            points, names, like = stack_flat([u.update for u in updates])
            weights = torch.tensor([float(u.num_examples) for u in updates])
            return unflatten(geometric_median(points, weights, self.iterations, self.nu), names, like)

        return combine


class CenteredClipping(Defense):
    """Centered clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021): from the previous round's aggregate v, ``iterations`` times
    v <- v + mean_i (x_i - v) * min(1, tau / ||x_i - v||). One outlier moves v by at most tau / n."""

    persistent = ("center",)

    def __init__(self, tau: float = 10.0, iterations: int = 1) -> None:
        check_range("defense.tau", tau, low=0, low_open=True)
        check_range("defense.iterations", iterations, low=1, integer=True)
        self.tau, self.iterations = tau, iterations
        self.center: torch.Tensor | None = None  # server: the previous aggregate, flattened

    def combiner(self) -> Combine:
        def combine(updates: list[ClientUpdate]) -> Tensors:
            points, names, like = stack_flat([u.update for u in updates])
            v = self.center if self.center is not None and self.center.shape == points[0].shape else torch.zeros_like(points[0])
            for _ in range(self.iterations):
                offsets = points - v
                scale = (self.tau / torch.linalg.vector_norm(offsets, dim=1).clamp_min(1e-12)).clamp(max=1.0)
                v = v + (offsets * scale[:, None]).mean(0)
            self.center = v.clone()
            return unflatten(v, names, like)

        return combine


class FoolsGold(Defense):
    """FoolsGold (Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil Settings",
    RAID 2020): per client, the sum of its updates so far; cosine similarities of those histories;
    pardoning (cs_ij scaled by v_i / v_j when v_j > v_i, v the row maxima); weight 1 - max_j cs_ij,
    rescaled to a maximum of 1, through the logit kappa * (ln(w / (1 - w)) + 0.5), clipped to [0, 1];
    the aggregate is the weight-normalised sum. Identical sybils get weight 0."""

    persistent = ("histories",)

    def __init__(self, kappa: float = 1.0) -> None:
        check_range("defense.kappa", kappa, low=0, low_open=True)
        self.kappa = kappa
        self.histories: dict[int, torch.Tensor] = {}

    def weights(self, histories: torch.Tensor) -> torch.Tensor:
        n = len(histories)
        unit = histories / torch.linalg.vector_norm(histories, dim=1, keepdim=True).clamp_min(1e-12)
        cs = unit @ unit.T - torch.eye(n)
        v = cs.max(dim=1).values
        for i in range(n):
            for j in range(n):
                if i != j and v[i] < v[j]:
                    cs[i, j] = cs[i, j] * v[i] / v[j]
        w = (1 - cs.max(dim=1).values).clamp(0, 1)
        if float(w.max()) == 0.0:
            return w
        w = w / w.max()
        w = torch.where(w >= 1, torch.full_like(w, 0.99), w)
        with torch.no_grad():
            logit = self.kappa * (torch.log(w / (1 - w)) + 0.5)
        return torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1)

    def combiner(self) -> Combine:
        def combine(updates: list[ClientUpdate]) -> Tensors:
            points, names, like = stack_flat([u.update for u in updates])
            for u, row in zip(updates, points):
                self.histories[u.client_id] = self.histories.get(u.client_id, torch.zeros_like(row)) + row
            if len(updates) < 2:
                return unflatten(points.mean(0), names, like)
            w = self.weights(torch.stack([self.histories[u.client_id] for u in updates]))
            total = float(w.sum())
            aggregate = (w[:, None] * points).sum(0) / total if total > 0 and math.isfinite(total) else torch.zeros_like(points[0])
            return unflatten(aggregate, names, like)

        return combine
