"""The attack part: which clients attack, with what, and how it is measured.

A client-side attack poisons a malicious client's data before training and its update
first among the update transforms (docs/architecture.md). A server-side adversary
(:meth:`Attack.forge`) sees the round's honest updates, as an omniscient attacker does, and
writes the malicious clients' uploads. The base class is the ``attack=none`` component:
every client is benign. Concrete attacks live in ``fedsim.attacks.poisoning``; most
subclass :class:`SelectedClientsAttack`, which picks its clients from the seed. Roles are
ground truth: the scoring harness reads them, the protocol never carries them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.params import check_range, check_that
from fedsim.component import Component, RunFacts
from fedsim.seeding import numpy_rng
from fedsim.state import Tensors

BENIGN = "benign"
MALICIOUS = "malicious"
UNRELIABLE = "unreliable"  # benign intent, low-quality data (MUD-HoG's fourth client type)
ROLES = (BENIGN, MALICIOUS, UNRELIABLE)


def attacker_order(num_clients: int, seed: int) -> np.ndarray:
    """The seeded order in which clients are drawn as attackers (the first k of it attack)."""
    return numpy_rng(seed, "attackers").permutation(num_clients)


class Attack(Component):
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

    def forge(self, server_round: int, honest: list[Tensors], malicious: list[int]) -> list[Tensors] | None:
        """Server-side adversary: the uploads of the ``malicious`` client ids (in that order), written
        after seeing this round's ``honest`` updates; None leaves the clients' own uploads."""
        return None

    def test_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Attack-specific metrics of the global model on the test split (e.g. attack success rate)."""
        return {}


class SelectedClientsAttack(Attack):
    """Base of attacks run by a seeded subset of clients: ``count`` of them when set, else
    ``fraction`` of the federation (``count`` overrides the ``fraction`` a config file gives).

    The subset is the first k clients of :func:`attacker_order`, so it depends only on
    the seed. A composite attack (``mixed``) may assign the k itself when both are unset.
    """

    role = MALICIOUS

    def __init__(self, fraction: float | None = None, count: int | None = None) -> None:
        if count is not None:
            check_range("attack.count", count, low=0, integer=True)
            fraction = None
        elif fraction is not None:
            check_range("attack.fraction", fraction, 0.0, 1.0)
        self.fraction = fraction
        self.count = count

    @property
    def has_size(self) -> bool:
        """Whether ``fraction`` or ``count`` is set."""
        return self.fraction is not None or self.count is not None

    def num_selected(self, num_clients: int) -> int:
        """How many of ``num_clients`` clients this attack runs on."""
        if self.count is not None:
            check_that("attack.count", self.count, self.count <= num_clients, f"at most num_clients={num_clients}")
            return self.count
        check_that("attack.fraction", None, self.fraction is not None, "set (or attack.count)")
        return int(np.floor(self.fraction * num_clients + 0.5))

    def check_run(self, run: RunFacts) -> None:
        self.num_selected(run.num_clients)

    def for_client(self, client_id: int, num_clients: int, seed: int) -> Attack | None:
        chosen = attacker_order(num_clients, seed)[: self.num_selected(num_clients)]
        return self if client_id in chosen else None
