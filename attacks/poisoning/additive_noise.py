"""Additive Gaussian noise: the attacker adds N(0, sigma^2) to every coordinate of its update."""

from __future__ import annotations

import torch

from fedsim.params import check_range
from fedsim.attack import SelectedClientsAttack
from fedsim.state import Tensors


class AdditiveNoise(SelectedClientsAttack):
    """Additive-noise attack as MUD-HoG defines it (Nguyen et al., ESORICS 2022): each round the
    malicious client uploads its update plus fresh Gaussian noise of standard deviation ``sigma``."""

    name = "additive_noise"

    def __init__(self, fraction: float | None = None, count: int | None = None, sigma: float = 0.01) -> None:
        super().__init__(fraction, count)
        check_range("attack.sigma", sigma, low=0, low_open=True)
        self.sigma = sigma

    def poison_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        return {
            k: v + self.sigma * torch.randn(v.shape, generator=generator, dtype=v.dtype).to(v.device)
            for k, v in update.items()
        }
