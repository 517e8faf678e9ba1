"""What every component kind shares: server-side state saved in checkpoints, and a check that
the component can work in the run it was configured for (docs/architecture.md)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class RunFacts:
    """The run-wide facts a component may check itself against before any work."""

    num_clients: int
    clients_per_round: int
    min_clients: int
    partition_sizes: tuple[int, ...]  # every client's true number of training examples
    input_shape: tuple[int, ...]
    num_classes: int


class Component:
    """Base of every component kind (strategy, attack, codec, defense, privacy observer).

    A component whose server-side attributes change during a run names them in
    ``persistent``; checkpoints save them and a resumed run restores them, so it
    continues exactly where the killed run stopped. Components with nothing to keep
    leave ``persistent`` empty.

    :meth:`check_run` is called once the run's data is known, before the first round: a
    component that cannot work in this run (Krum with too few clients per round, more
    attackers than clients) raises :class:`fedsim.params.ParamError` there, in one line.
    """

    persistent: ClassVar[tuple[str, ...]] = ()

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the attributes named in ``persistent``."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.persistent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the attributes saved by :meth:`state_dict`."""
        missing = sorted(set(self.persistent) - set(state))
        if missing:
            raise KeyError(f"{type(self).__name__}: checkpoint lacks state {missing}")
        for name in self.persistent:
            setattr(self, name, copy.deepcopy(state[name]))

    def check_run(self, run: RunFacts) -> None:
        """Raise :class:`~fedsim.params.ParamError` if this component cannot work in ``run`` (default: it can)."""
