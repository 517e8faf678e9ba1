"""Several attacks in one run, each on its own disjoint, seeded set of clients."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.attack import Attack, SelectedClientsAttack, attacker_order


class Mixed(Attack):
    """A mix of attacks as in MUD-HoG's experiments (Nguyen et al., ESORICS 2022: e.g. 10% each of
    sign flip, additive noise, label flip and multi-label flip, plus 10% unreliable clients).

    ``components`` maps a name to an attack; each takes its own ``fraction``/``count`` or, when
    neither is set, this ``fraction``. Clients are assigned in consecutive blocks of the seeded
    attacker order, so the sets are disjoint.
    """

    name = "mixed"

    def __init__(self, components: dict[str, SelectedClientsAttack], fraction: float | None = None) -> None:
        if not components:
            raise ValueError("attack.components is empty")
        for key, attack in components.items():
            if not isinstance(attack, SelectedClientsAttack):
                raise ValueError(f"attack.components.{key} is not a SelectedClientsAttack")
            if not attack.has_size:
                if fraction is None:
                    raise ValueError(f"attack.components.{key}: set its fraction/count or attack.fraction")
                attack.fraction = fraction
        self.components = components

    def for_client(self, client_id: int, num_clients: int, seed: int) -> Attack | None:
        sizes = [attack.num_selected(num_clients) for attack in self.components.values()]
        if sum(sizes) > num_clients:
            raise ValueError(f"attack.components need {sum(sizes)} clients but num_clients={num_clients}")
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
