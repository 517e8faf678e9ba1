"""Malformed, non-finite and failing clients never reach the aggregate and never stop the run."""

from __future__ import annotations

import sys
import textwrap

from uuid import uuid4

import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_config
from conftest import Run
from fedsim.engine.replies import collect
from fedsim.training import OptimizerConfig
from fedsim.validation import update_problem

@pytest.fixture
def hostile_module(tmp_path, monkeypatch):
    module = tmp_path / "hostile.py"
    module.write_text(
        textwrap.dedent(
            """
            import torch
            from fedsim.attack import Attack, MALICIOUS


            class Hostile(Attack):
                \"\"\"Client 0 sends NaN, client 1 raises, client 2 sends a wrong shape; the rest are honest.\"\"\"

                role = MALICIOUS

                def __init__(self, client=None):
                    self.client = client

                def for_client(self, client_id, num_clients, seed):
                    return Hostile(client_id) if client_id < 3 else None

                def poison_data(self, x, y, generator):
                    if self.client == 1:
                        raise RuntimeError("client 1 crashed")
                    return x, y

                def poison_update(self, update, generator):
                    name = next(iter(update))
                    if self.client == 0:
                        return {**update, name: update[name] * float("nan")}
                    return {**update, name: torch.zeros(3, 3)}
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("hostile", None)


@pytest.mark.parametrize("backend", ["inline", "ray"])
def test_hostile_clients_are_rejected_and_logged(run_sim, hostile_module, caplog, backend):
    _, rounds, _ = run_sim("num_clients=5", "clients_per_round=5", "attack._target_=hostile.Hostile", f"backend={backend}")
    for record in rounds:
        assert [f["client"] for f in record["failures"]] == [1]
        assert "client 1 crashed" in record["failures"][0]["reason"]
        rejected = {r["client"]: r["reason"] for r in record["rejected"]}
        assert set(rejected) == {0, 2}
        assert "NaN" in rejected[0] and "shape" in rejected[2]
        assert record["clients_aggregated"] == 2
        assert sorted(record["clients"]) == ["3", "4"]
    assert rounds[-1]["test_acc"] > 0.6  # the honest clients still trained the model
    assert any("rejected client 0" in m for m in caplog.messages)


EXPECTED = {"w": (2, 3), "b": (3,)}


@pytest.mark.parametrize(
    ("update", "needle"),
    [
        ({"w": torch.zeros(2, 3)}, "missing ['b']"),
        ({"w": torch.zeros(2, 3), "b": torch.zeros(3), "x": torch.zeros(1)}, "unexpected ['x']"),
        ({"w": torch.zeros(3, 2), "b": torch.zeros(3)}, "shape"),
        ({"w": torch.zeros(2, 3, dtype=torch.int64), "b": torch.zeros(3)}, "dtype"),
        ({"w": torch.full((2, 3), float("inf")), "b": torch.zeros(3)}, "NaN or Inf"),
        ({"w": torch.full((2, 3), 100.0), "b": torch.zeros(3)}, "exceeds max_update_norm"),
    ],
)
def test_update_problem_names_the_reason(update, needle):
    assert needle in update_problem(update, EXPECTED, max_norm=10.0)


def test_update_problem_accepts_wellformed():
    assert update_problem({"w": torch.ones(2, 3), "b": torch.ones(3)}, EXPECTED, max_norm=10.0) is None


# Property: over random malformed replies, exactly the well-formed ones reach the aggregate.

MUTATIONS = ("ok", "ok", "nan", "inf", "shape", "int", "huge", "missing")
MAX_NORM = 50.0


@pytest.fixture(scope="module")
def screening_server(tmp_path_factory):
    run = Run(make_config(f"max_update_norm={MAX_NORM}"))
    return run, run.strategy.init_global(run.new_model())


def mutated(tensor: torch.Tensor, how: str, generator: torch.Generator) -> torch.Tensor | None:
    small = torch.randn(tensor.shape, generator=generator) * 0.01
    return {
        "ok": small,
        "nan": small.index_fill(0, torch.tensor([0]), float("nan")),
        "inf": small.index_fill(0, torch.tensor([0]), float("-inf")),
        "shape": torch.zeros(*tensor.shape, 2),
        "int": small.long(),
        "huge": torch.full(tensor.shape, 1e3),
        "missing": None,
    }[how]


reply_specs = st.fixed_dictionaries(
    {
        "mutations": st.lists(st.sampled_from(MUTATIONS), min_size=4, max_size=4),
        "extra_array": st.booleans(),
        "num_examples": st.integers(-2, 40),
        "has_metrics": st.booleans() | st.just(True),
        "seed": st.integers(0, 2**16),
    }
)


def reply_message(spec: dict, global_state: dict, node_id: int) -> Message:
    generator = torch.Generator().manual_seed(spec["seed"])
    arrays = {}
    for (name, tensor), how in zip(global_state.items(), spec["mutations"]):
        value = mutated(tensor, how, generator)
        if value is not None:
            arrays[name] = value
    if spec["extra_array"]:
        arrays["smuggled"] = torch.zeros(3)
    content = RecordDict({"update": ArrayRecord(torch_state_dict=arrays)})
    if spec["has_metrics"]:
        content["metrics"] = MetricRecord({"num_examples": spec["num_examples"], "bytes_up": 1})
    request = Message(RecordDict(), dst_node_id=node_id, message_type="train", group_id="1")
    request.metadata.__dict__["_message_id"] = str(uuid4())
    return Message(content, reply_to=request)


def well_formed(spec: dict) -> bool:
    return (
        all(m == "ok" for m in spec["mutations"])
        and not spec["extra_array"]
        and spec["num_examples"] > 0
        and spec["has_metrics"]
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(reply_specs, min_size=1, max_size=6))
def test_no_malformed_reply_ever_reaches_the_aggregate(screening_server, specs):
    run, global_state = screening_server
    assert len(global_state) == 4  # the MLP's two weights and two biases, one mutation each
    replies = [(i, reply_message(spec, global_state, 1001 + i)) for i, spec in enumerate(specs)]
    expected = run.strategy.upload_shapes(global_state)
    got = collect(run.ctx, run.codec, 1, replies, global_state, expected, 0.1, OptimizerConfig(), {}, run.strategy.upload_dtypes(global_state))
    accepted = [u.client_id for u in got.updates]
    assert accepted == [i for i, spec in enumerate(specs) if well_formed(spec)]
    assert sorted(accepted + [r["client"] for r in got.rejected]) == list(range(len(specs)))
    for update in got.updates:
        assert update_problem(update.update, expected, MAX_NORM) is None
    if got.updates:
        aggregate = run.strategy.aggregate(1, global_state, got.updates, run.strategy.combine)
        assert all(bool(torch.isfinite(t).all()) for t in aggregate.values())
