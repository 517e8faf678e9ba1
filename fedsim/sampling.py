"""Seeded client sampling."""

from __future__ import annotations

from fedsim.seeding import numpy_rng


def sample_clients(num_clients: int, clients_per_round: int, seed: int, server_round: int) -> list[int]:
    """The sorted client ids taking part in ``server_round``: a pure function of its arguments."""
    if clients_per_round >= num_clients:
        return list(range(num_clients))
    rng = numpy_rng(seed, "sample", server_round)
    return sorted(int(c) for c in rng.choice(num_clients, size=clients_per_round, replace=False))
