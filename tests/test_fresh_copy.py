"""A client's fresh components are what ``copy.deepcopy`` makes of the templates, on the direct path too."""

from __future__ import annotations

import copy

from fedsim.component import Component, fresh_copy
from fedsim.engine.context import build_components
from conftest import make_config


class Settings(Component):
    """Only immutable attributes: copied directly."""

    def __init__(self) -> None:
        self.rate, self.name, self.shape, self.off = 0.5, "x", (2, (3, "a")), None


class Holds(Component):
    """A mutable attribute: deep-copied."""

    def __init__(self) -> None:
        self.rate, self.seen = 0.5, [1, 2]


class OwnCopy(Component):
    """Its own copy protocol: used."""

    def __init__(self) -> None:
        self.rate = 0.5

    def __deepcopy__(self, memo: dict) -> "OwnCopy":
        twin = OwnCopy()
        twin.rate = -1.0
        return twin


def test_the_direct_copy_equals_deepcopy_and_mutable_state_is_never_shared() -> None:
    for template in (Settings(), Holds(), OwnCopy()):
        made, deep = fresh_copy(template), copy.deepcopy(template)
        assert type(made) is type(deep) and made is not template
        assert vars(made) == vars(deep)
    holds = Holds()
    assert fresh_copy(holds).seen is not holds.seen
    settings = Settings()
    twin = fresh_copy(settings)
    twin.rate = 9.0
    assert settings.rate == 0.5


def test_one_memo_keeps_what_components_share_shared_in_the_copies() -> None:
    shared = Holds()
    first, second = Holds(), Holds()
    first.seen = second.seen = shared.seen
    memo: dict = {}
    a, b = fresh_copy(first, memo), fresh_copy(second, memo)
    assert a.seen is b.seen and a.seen is not shared.seen
    settings = Settings()  # the direct path keeps the memo too: one object copied twice is one copy
    assert fresh_copy(settings, memo) is fresh_copy(settings, memo) is copy.deepcopy(settings, memo)


def test_every_shipped_component_copies_as_deepcopy_does() -> None:
    for overrides in ([], ["compression=dgc", "attack=label_flip", "defense=mudhog", "strategy=fedspeed", "privacy_attack=dlg"],
                      ["compression=spsa_one_byte", "strategy=one_byte_spsa", "attack=alie", "defense=krum"],
                      ["strategy=monna", "attack=mixed", "privacy_attack=inverting_gradients"]):
        parts = build_components(make_config(*overrides))
        for component in vars(parts).values():
            made, deep = fresh_copy(component), copy.deepcopy(component)
            assert type(made) is type(deep) and made is not component
            assert vars(made).keys() == vars(deep).keys()
