"""The privacy-observer hook: an honest-but-curious server looking at updates.

Observers see exactly what the server receives (decoded updates and the global
state) and report reconstruction scores; they never change training. The base
class is the ``privacy_attack=none`` component.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.persistent import Persistent
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate

if TYPE_CHECKING:
    from fedsim.environment import Environment


class PrivacyAttack(Persistent):
    """No privacy attack: the server observes nothing."""

    def observe(
        self,
        server_round: int,
        global_state: Tensors,
        updates: list[ClientUpdate],
        env: "Environment",
        out_dir: Path,
    ) -> dict[str, Any]:
        """Inspect this round's updates; return fields for rounds.jsonl (plots may go to the run folder ``out_dir``)."""
        return {}
