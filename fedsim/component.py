"""What every component kind shares: server-side state saved in checkpoints, and a check that
the component can work in the run it was configured for (docs/architecture.md)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache
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


COPY_PROTOCOL = ("__deepcopy__", "__copy__", "__reduce_ex__", "__reduce__", "__getstate__", "__setstate__", "__getnewargs__",
                 "__getnewargs_ex__", "__slots__", "__new__")
ATOMS = (type(None), bool, int, float, complex, str, bytes)


def fresh_copy(component: Any, memo: dict[int, Any] | None = None) -> Any:
    """``copy.deepcopy(component, memo)``. For an instance of a class that leaves Python's copy protocol as it is,
    whose attributes are all immutable values (numbers, strings, None, tuples of them), deepcopy would make
    a new instance holding the very same values: that is made directly, at a fraction of deepcopy's generic
    cost (a client copies every component for every message). Anything else is deep-copied."""
    if memo is not None and id(component) in memo:
        return memo[id(component)]  # copied already under this memo, as deepcopy would return it
    state = getattr(component, "__dict__", None)
    if type(state) is dict and default_copy_protocol(type(component)) and all(immutable(v) for v in state.values()):
        twin = object.__new__(type(component))
        twin.__dict__.update(state)
        if memo is not None:
            memo[id(component)] = twin
        return twin
    return copy.deepcopy(component, memo)


@lru_cache(maxsize=256)
def default_copy_protocol(cls: type) -> bool:
    """Whether no class of ``cls``'s MRO but ``object`` defines a method or slot of the copy protocol."""
    return all(name not in vars(k) for k in cls.__mro__ if k is not object for name in COPY_PROTOCOL)


def immutable(value: Any) -> bool:
    """Whether deepcopy returns ``value`` itself: an atom, or a tuple of such values."""
    return type(value) in ATOMS or (type(value) is tuple and all(immutable(v) for v in value))
