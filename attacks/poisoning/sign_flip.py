"""Sign flipping: the attacker trains normally and uploads -k times its update."""

from __future__ import annotations

import torch

from fedsim.attack import SelectedClientsAttack
from fedsim.state import Tensors


class SignFlip(SelectedClientsAttack):
    """Sign-flipping attack as MUD-HoG defines it (Nguyen et al., "Multi-Dimensional Update
    Histories of Gradients", ESORICS 2022): the malicious client's update times ``-scale``."""

    name = "sign_flip"

    def __init__(self, fraction: float | None = None, count: int | None = None, scale: float = 1.0) -> None:
        super().__init__(fraction, count)
        if scale <= 0:
            raise ValueError(f"attack.scale={scale}: must be > 0")
        self.scale = scale

    def poison_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        return {k: -self.scale * v for k, v in update.items()}
