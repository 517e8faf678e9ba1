"""The defense hook: which client updates the server keeps.

The base class is the ``defense=none`` component: every valid update is kept.
Concrete defenses (MUD-HoG, robust aggregators) live in ``fedsim.defenses``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.attack import BENIGN
from fedsim.persistent import Persistent
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate


@dataclass
class Verdict:
    """A defense's decision on one round's updates, aligned with the update list."""

    keep: list[bool]
    # The role the defense believes each client has: benign, unreliable, malicious, or a
    # finer malicious label naming the suspected attack type (scored as malicious).
    labels: list[str]
    # A robust combination of the kept updates (median, trimmed mean, ...): when set, it
    # replaces each kept update before strategy.aggregate, so it composes with any strategy.
    combined: Tensors | None = None


class Defense(Persistent):
    """No defense: every valid update is aggregated, every client is deemed benign."""

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        """Decide which updates to aggregate."""
        return Verdict(keep=[True] * len(updates), labels=[BENIGN] * len(updates))
