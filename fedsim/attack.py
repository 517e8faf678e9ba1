"""The poisoning-attack hook: which clients are malicious and what they do.

The base class is the ``attack=none`` component: every client is benign. Concrete
attacks live in ``fedsim.attacks`` and override the hooks they need.
"""

from __future__ import annotations

import torch

from fedsim.state import Tensors

BENIGN = "benign"
MALICIOUS = "malicious"


class Attack:
    """No attack: every client is benign and behaves as prescribed."""

    def role(self, client_id: int, num_clients: int, seed: int) -> str:
        """The client's true role (recorded for scoring, never shown to defenses)."""
        return BENIGN

    def poison_data(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data attack, applied to a malicious client's data before local training."""
        return x, y

    def poison_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        """Update attack, applied to a malicious client's update before encoding."""
        return update
