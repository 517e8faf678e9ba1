"""Server-side state that components carry from round to round, saved in checkpoints."""

from __future__ import annotations

import copy
from typing import Any, ClassVar


class Persistent:
    """Mixin of every component kind (strategy, attack, codec, defense, privacy observer).

    A component whose server-side attributes change during a run names them in
    ``persistent``; checkpoints save them and a resumed run restores them, so it
    continues exactly where the killed run stopped. Components with nothing to keep
    leave ``persistent`` empty.
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
