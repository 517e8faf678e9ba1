"""The poisoning-attack hook: which clients attack, with what, and how it is measured.

The base class is the ``attack=none`` component: every client is benign. Concrete
attacks live in ``fedsim.attacks``; most subclass :class:`SelectedClientsAttack`,
which picks its clients (a fraction or an explicit count) from the seed.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.persistent import Persistent
from fedsim.seeding import numpy_rng
from fedsim.state import Tensors

BENIGN = "benign"
MALICIOUS = "malicious"
UNRELIABLE = "unreliable"  # benign intent, low-quality data (MUD-HoG's fourth client type)
ROLES = (BENIGN, MALICIOUS, UNRELIABLE)


def attacker_order(num_clients: int, seed: int) -> np.ndarray:
    """The seeded order in which clients are drawn as attackers (the first k of it attack)."""
    return numpy_rng(seed, "attackers").permutation(num_clients)


class Attack(Persistent):
    """No attack: every client is benign and behaves as prescribed.

    ``name`` is the attack type recorded per client for scoring; ``role`` is the true
    role of the clients it acts on (never shown to defenses).
    """

    name = BENIGN
    role = BENIGN

    def for_client(self, client_id: int, num_clients: int, seed: int) -> Attack | None:
        """The attack acting on ``client_id``, or None where the client is benign."""
        return None

    def poison_data(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Data attack, applied to an attacking client's data before local training."""
        return x, y

    def poison_update(self, update: Tensors, generator: torch.Generator) -> Tensors:
        """Update attack, applied to an attacking client's update before encoding."""
        return update

    def test_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Attack-specific metrics of the global model on the test split (e.g. attack success rate)."""
        return {}


class SelectedClientsAttack(Attack):
    """Base of attacks run by a seeded subset of clients: ``fraction`` of them, or ``count``.

    The subset is the first k clients of :func:`attacker_order`, so it depends only on
    the seed. A composite attack (``mixed``) may assign the k itself when both are unset.
    """

    role = MALICIOUS

    def __init__(self, fraction: float | None = None, count: int | None = None) -> None:
        if fraction is not None and count is not None:
            raise ValueError(f"attack.fraction={fraction} and attack.count={count}: set only one")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"attack.fraction={fraction}: must be in [0, 1]")
        if count is not None and count < 0:
            raise ValueError(f"attack.count={count}: must be >= 0")
        self.fraction = fraction
        self.count = count

    @property
    def has_size(self) -> bool:
        """Whether ``fraction`` or ``count`` is set."""
        return self.fraction is not None or self.count is not None

    def num_selected(self, num_clients: int) -> int:
        """How many of ``num_clients`` clients this attack runs on."""
        if self.count is not None:
            if self.count > num_clients:
                raise ValueError(f"attack.count={self.count}: more than num_clients={num_clients}")
            return self.count
        if self.fraction is None:
            raise ValueError("attack.fraction or attack.count must be set")
        return int(np.floor(self.fraction * num_clients + 0.5))

    def for_client(self, client_id: int, num_clients: int, seed: int) -> Attack | None:
        chosen = attacker_order(num_clients, seed)[: self.num_selected(num_clients)]
        return self if client_id in chosen else None
