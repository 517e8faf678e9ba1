"""Omniscient Byzantine attacks: written by the server-side adversary after it sees the round's honest
updates (ALIE, Fall of Empires / inner-product manipulation, min-max and min-sum).

The selected clients train normally; the engine's adversary slot (:meth:`Attack.forge`) then replaces
all their uploads with one crafted vector, as the papers' attackers do. Roles stay the harness's, so
detection precision and recall are scored as for every attack.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from statistics import NormalDist

import torch

from fedsim.attack import SelectedClientsAttack
from fedsim.params import check_choice, check_range
from fedsim.state import Tensors, stack_flat, unflatten


class OmniscientAttack(SelectedClientsAttack, ABC):
    """Base: every malicious client of a round uploads :meth:`craft` of the honest updates."""

    @abstractmethod
    def craft(self, honest: torch.Tensor, num_malicious: int) -> torch.Tensor:
        """The malicious vector from the honest updates (one per row)."""

    def forge(self, server_round: int, honest: list[Tensors], malicious: list[int]) -> list[Tensors] | None:
        if not honest or not malicious:
            return None
        matrix, names, like = stack_flat(honest)
        vector = unflatten(self.craft(matrix, len(malicious)), names, like)
        return [{n: t.clone() for n, t in vector.items()} for _ in malicious]


class ALIE(OmniscientAttack):
    """"A Little Is Enough" (Baruch, Baruch, Goldberg, NeurIPS 2019): mean - z * std of the honest
    updates, coordinate-wise, with z = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f, n the round's
    clients and f its attackers (``z`` fixes it instead). The reference of MoNNA's paper
    (LPD-EPFL/robust-collaborative-learning, ``little``) instead line-searches the factor against the
    aggregator in use; that adaptive form is not implemented."""

    name = "alie"

    def __init__(self, fraction: float | None = None, count: int | None = None, z: float | None = None) -> None:
        super().__init__(fraction, count)
        if z is not None:
            check_range("attack.z", z, low=0)
        self.z = z

    def z_for(self, n: int, f: int) -> float:
        if self.z is not None:
            return self.z
        s = math.floor(n / 2 + 1) - f
        return NormalDist().inv_cdf(min(max((n - s) / n, 1e-6), 1 - 1e-6))

    def craft(self, honest: torch.Tensor, num_malicious: int) -> torch.Tensor:
        std = honest.std(dim=0, unbiased=True) if len(honest) > 1 else torch.zeros_like(honest[0])
        return honest.mean(dim=0) - self.z_for(len(honest) + num_malicious, num_malicious) * std


class FallOfEmpires(OmniscientAttack):
    """Fall of Empires / inner-product manipulation (Xie, Koyejo, Gupta, UAI 2019): -epsilon times the
    honest mean, so the inner product of the aggregate with the true gradient turns negative.
    ``attack=foe`` uses a large epsilon (100), ``attack=ipm`` the small one (0.1) of the paper."""

    name = "foe"

    def __init__(self, fraction: float | None = None, count: int | None = None, epsilon: float = 100.0) -> None:
        super().__init__(fraction, count)
        check_range("attack.epsilon", epsilon, low=0, low_open=True)
        self.epsilon = epsilon

    def craft(self, honest: torch.Tensor, num_malicious: int) -> torch.Tensor:
        return -self.epsilon * honest.mean(dim=0)


DIRECTIONS = ("std", "unit", "sign")


class MinMax(OmniscientAttack):
    """Min-max (Shejwalkar and Houmansadr, "Manipulating the Byzantine", NDSS 2021): mean + gamma * p,
    p = -std (``direction=std``), -mean/||mean|| (``unit``) or -sign(mean) (``sign``), gamma the largest
    (binary search from ``gamma_init``, to ``tolerance``) with max_i ||x - h_i|| <= max_ij ||h_i - h_j||."""

    name = "min_max"

    def __init__(self, fraction: float | None = None, count: int | None = None, direction: str = "std",
                 gamma_init: float = 10.0, tolerance: float = 1e-5) -> None:
        super().__init__(fraction, count)
        check_choice("attack.direction", direction, DIRECTIONS)
        check_range("attack.gamma_init", gamma_init, low=0, low_open=True)
        check_range("attack.tolerance", tolerance, low=0, low_open=True)
        self.direction, self.gamma_init, self.tolerance = direction, gamma_init, tolerance

    def perturbation(self, honest: torch.Tensor) -> torch.Tensor:
        mean = honest.mean(dim=0)
        if self.direction == "std":
            return -honest.std(dim=0, unbiased=True) if len(honest) > 1 else torch.zeros_like(mean)
        if self.direction == "unit":
            return -mean / mean.norm().clamp_min(1e-12)
        return -torch.sign(mean)

    def within(self, candidate: torch.Tensor, honest: torch.Tensor, distances: torch.Tensor) -> bool:
        """Min-max's condition: no honest update is farther from the candidate than any two honest ones are apart."""
        return bool(torch.cdist(candidate[None], honest)[0].max() <= distances.max())

    def craft(self, honest: torch.Tensor, num_malicious: int) -> torch.Tensor:
        mean, p = honest.mean(dim=0), self.perturbation(honest)
        distances = torch.cdist(honest, honest)
        gamma, step, best = self.gamma_init, self.gamma_init / 2, 0.0
        while step > self.tolerance:  # the paper's Algorithm 1
            if self.within(mean + gamma * p, honest, distances):
                best, gamma = gamma, gamma + step
            else:
                gamma = gamma - step
            step /= 2
        return mean + best * p


class MinSum(MinMax):
    """Min-sum (Shejwalkar and Houmansadr, NDSS 2021): as min-max, with the condition that the sum of
    squared distances to the honest updates stays within the largest such sum of an honest update."""

    name = "min_sum"

    def within(self, candidate: torch.Tensor, honest: torch.Tensor, distances: torch.Tensor) -> bool:
        return bool(torch.cdist(candidate[None], honest)[0].pow(2).sum() <= distances.pow(2).sum(dim=1).max())
