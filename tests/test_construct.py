"""Components are built from their config nodes as Hydra's ``instantiate(node, _convert_="all")`` builds them:
the direct path for flat nodes gives the same objects and the same errors, and anything else goes to Hydra."""

from __future__ import annotations

import functools

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from fedsim.engine.context import construct


class Recorder:
    """Keeps its arguments and mutates the list it is given."""

    def __init__(self, rate: float = 0.1, names: list | None = None, table: dict | None = None, tag: str | None = None) -> None:
        self.rate, self.names, self.table, self.tag = rate, names, table, tag
        if names is not None:
            names.append("mine")


class Refuses:
    def __init__(self, count: int) -> None:
        raise KeyError(f"count={count}")


TARGET = f"{__name__}.Recorder"


def test_a_flat_node_builds_what_hydra_builds_and_on_copies_of_its_arguments() -> None:
    node = {"_target_": TARGET, "rate": 0.5, "names": ["a"], "table": {"k": [1, 2.5, None, True]}, "tag": "x"}
    direct, hydra = construct(node), instantiate(node, _convert_="all")
    assert type(direct) is type(hydra) is Recorder
    assert vars(direct) == vars(hydra)
    assert type(direct.names) is list and type(direct.table) is dict
    assert node["names"] == ["a"]  # the object mutated its own copy


@pytest.mark.parametrize("node", [
    {"_target_": TARGET, "names": {"_target_": "builtins.list"}},  # a nested target: Hydra builds it
    {"_target_": TARGET, "_partial_": True},
    {"_target_": TARGET, "tag": "${oc.env:HOME}"},  # something left to resolve
])
def test_any_other_node_goes_to_hydra(node: dict) -> None:
    built = construct(node)
    if node.get("_partial_"):
        assert isinstance(built, functools.partial)
    else:
        assert vars(built) == vars(instantiate(node, _convert_="all"))


def test_a_failing_constructor_raises_as_hydra_raises() -> None:
    node = {"_target_": f"{__name__}.Refuses", "count": 3}
    with pytest.raises(InstantiationException) as direct:
        construct(node)
    with pytest.raises(InstantiationException) as hydra:
        instantiate(node, _convert_="all")
    assert isinstance(direct.value.__cause__, KeyError) and isinstance(hydra.value.__cause__, KeyError)
    assert str(direct.value).splitlines()[0] == str(hydra.value).splitlines()[0]
    assert str(direct.value).splitlines()[-1] == str(hydra.value).splitlines()[-1]
