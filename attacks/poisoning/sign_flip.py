"""Sign flipping: the attacker trains normally and uploads -k times its update."""

from __future__ import annotations

import torch

from fedsim.params import check_range
from fedsim.attack import SelectedClientsAttack
from fedsim.state import Tensors


class SignFlip(SelectedClientsAttack):
    """Sign-flipping attack as MUD-HoG defines it (Nguyen et al., "Multi-Dimensional Update
    Histories of Gradients", ESORICS 2022): the malicious client's update times ``-scale``."""

    name = "sign_flip"

    def __init__(self, fraction: float | None = None, count: int | None = None, scale: float = 1.0) -> None:
        super().__init__(fraction, count)
        check_range("attack.scale", scale, low=0, low_open=True)
        self.scale = scale

    def poison_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        return {k: -self.scale * v for k, v in update.items()}
