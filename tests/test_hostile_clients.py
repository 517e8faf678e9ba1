"""Malformed, non-finite and failing clients never reach the aggregate and never stop the run."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

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
