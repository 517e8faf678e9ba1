"""The defense part: screening (which updates to keep) and, optionally, a robust combine.

The two are separate (docs/architecture.md): :meth:`Defense.screen` returns a keep mask and
the role it believes each client has (MUD-HoG, Krum's selection); :meth:`Defense.combiner`
returns a robust aggregation rule (median, trimmed mean, Bulyan's) that the engine hands to
the strategy as its ``combine`` in place of the strategy's own. A defense that trusts the server's
own training (FLTrust) asks for a root dataset and is shown the server's update on it each round. A robust aggregate is never
pasted into the individual updates. The base class is ``defense=none``: keep everything,
combine with the strategy's own rule. Concrete defenses live in ``fedsim.defenses``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.attack import BENIGN
from fedsim.component import Component
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, Combine


@dataclass
class Verdict:
    """A defense's screening of one round's updates, aligned with the update list."""

    keep: list[bool]
    # The role the defense believes each client has: benign, unreliable, malicious, or a
    # finer malicious label naming the suspected attack type (scored as malicious).
    labels: list[str]


class Defense(Component):
    """No defense: every valid update is aggregated, every client is deemed benign."""

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        """Decide which updates to aggregate."""
        return Verdict(keep=[True] * len(updates), labels=[BENIGN] * len(updates))

    def combiner(self) -> Combine | None:
        """A robust rule replacing the strategy's combine, or None to keep the strategy's own."""
        return None

    def root_examples(self) -> int:
        """How many clean training examples the server should train on each round for this defense
        (FLTrust's root dataset); 0, the default, asks for none."""
        return 0

    def observe_root_update(self, server_round: int, update: Tensors) -> None:
        """The server's own update on its root dataset this round, given before :meth:`screen`
        (only to a defense whose :meth:`root_examples` is positive)."""
