"""Who receives whose message in a peer-to-peer round: the network a decentralised strategy runs on.

The engine builds it from the harness's attack assignment and hands it to the strategy
(:meth:`fedsim.strategy.Strategy.bind_network`): delivery is the simulated network's business,
and under attack the adversary's, never the algorithm's, which only aggregates what arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.seeding import numpy_rng


@dataclass(frozen=True)
class Network:
    """A complete graph where every message arrives (the default: no adversarial delivery)."""

    def received(self, server_round: int, receiver: int, senders: list[int]) -> list[int]:
        """The senders whose messages reach ``receiver`` this round (its own always does)."""
        return list(senders)


@dataclass(frozen=True)
class AdversarialDelivery(Network):
    """The reception model of MoNNA's reference (Farhadkhani et al., ICML 2023;
    LPD-EPFL/robust-collaborative-learning, ``peerToPeer.py``): an honest node receives its own
    vector, every Byzantine vector, and n - 2f - 1 other honest vectors drawn at random (seeded by
    round and receiver): q = n - f messages, the worst case a node must tolerate. A Byzantine
    receiver gets everything (its model is not scored)."""

    byzantine: frozenset[int]
    seed: int

    def received(self, server_round: int, receiver: int, senders: list[int]) -> list[int]:
        if receiver in self.byzantine:
            return list(senders)
        f, n = len(self.byzantine), len(senders)
        others = [s for s in senders if s != receiver and s not in self.byzantine]
        draw = numpy_rng(self.seed, "p2p-delivery", server_round, receiver).permutation(len(others))
        chosen = {others[i] for i in draw[: max(n - 2 * f - 1, 0)]}
        return [s for s in senders if s == receiver or s in self.byzantine or s in chosen]
