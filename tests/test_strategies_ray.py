"""FedSpeed, MoNNA and HyperFL end to end through Flower's Ray simulation engine: same numbers as the inline backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from strategy_helpers import run_rounds

RUNS = {
    # client state (FedSpeed's correction) must persist in each Ray node's Context across rounds
    "fedspeed": ("strategy=fedspeed", "num_clients=3", "clients_per_round=2", "rounds=2"),
    # per-client payloads (each node's own model) and the honest-node evaluation, with a faulty node
    "monna": ("strategy=monna", "strategy.f=1", "num_clients=3", "clients_per_round=3", "rounds=2",
              "attack=sign_flip", "attack.fraction=null", "attack.count=1"),
    # private embedding + head in each client's state, hypernetwork-only uploads, personalised evaluation
    "hyperfl": ("strategy=hyperfl", "num_clients=3", "clients_per_round=2", "rounds=2", "model.hidden=[16]"),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_strategy_through_ray_matches_inline(tmp_path: Path, name: str) -> None:
    ray = run_rounds(tmp_path / "ray", *RUNS[name], "backend=ray", "backend.num_cpus=2")
    inline = run_rounds(tmp_path / "inline", *RUNS[name])
    assert [r["clients_aggregated"] for r in ray] == [r["clients_sampled"] for r in ray]
    assert [r["test_acc"] for r in ray] == [r["test_acc"] for r in inline]
    assert [r["test_loss"] for r in ray] == pytest.approx([r["test_loss"] for r in inline], rel=1e-6)
