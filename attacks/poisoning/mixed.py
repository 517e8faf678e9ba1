"""Several attacks in one run, each on its own disjoint, seeded set of clients."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.attack import Attack, SelectedClientsAttack, attacker_order
from fedsim.component import RunFacts
from fedsim.params import check_that


class Mixed(Attack):
    """A mix of attacks as in MUD-HoG's experiments (Nguyen et al., ESORICS 2022: e.g. 10% each of
    sign flip, additive noise, label flip and multi-label flip, plus 10% unreliable clients).

    ``components`` maps a name to an attack; each takes its own ``fraction``/``count`` or, when
    neither is set, this ``fraction``. Clients are assigned in consecutive blocks of the seeded
    attacker order, so the sets are disjoint.
    """

    name = "mixed"

    def __init__(self, components: dict[str, SelectedClientsAttack], fraction: float | None = None) -> None:
        check_that("attack.components", components, len(components) > 0, "a non-empty mapping of attacks")
        for key, attack in components.items():
            check_that(f"attack.components.{key}", type(attack).__name__, isinstance(attack, SelectedClientsAttack),
                       "an attack run by selected clients (a fedsim.attack.SelectedClientsAttack)")
            if not attack.has_size:
                check_that("attack.fraction", fraction, fraction is not None, f"set, or attack.components.{key}.fraction/count")
                attack.fraction = fraction
        self.components, self.fraction = components, fraction

    def sizes(self, num_clients: int) -> list[int]:
        """How many clients each component attack runs on; together at most ``num_clients``."""
        sizes = [attack.num_selected(num_clients) for attack in self.components.values()]
        check_that("attack.fraction", self.fraction, sum(sizes) <= num_clients,
                   f"small enough for the components' {sum(sizes)} attackers to fit in num_clients={num_clients}")
        return sizes

    def check_run(self, run: RunFacts) -> None:
        self.sizes(run.num_clients)

    def for_client(self, client_id: int, num_clients: int, seed: int) -> Attack | None:
        sizes = self.sizes(num_clients)
        order, start = attacker_order(num_clients, seed).tolist(), 0
        for attack, size in zip(self.components.values(), sizes):
            if client_id in order[start : start + size]:
                return attack
            start += size
        return None

    def test_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {
            f"{key}/{metric}": value
            for key, attack in self.components.items()
            for metric, value in attack.test_metrics(model, x, y).items()
        }
