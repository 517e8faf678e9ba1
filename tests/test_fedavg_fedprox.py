"""FedAvg's and FedProx's defining arithmetic, computed by hand: the sample-weighted mean (on the
strategy and through a real run, with the simulator's own partition sizes) and the proximal step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict

from fedsim.engine.context import RunContext, build_components, check_fit
from fedsim.engine.simulation import simulate
from fedsim.state import ClientState, Tensors
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategies.fedprox import FedProx
from fedsim.strategy import ClientUpdate, Combine, LocalTask
from poisoning_helpers import make_cfg
from strategy_helpers import ce_grad, linear_model


def test_fedavg_adds_the_sample_weighted_mean_of_unequal_clients() -> None:
    strategy = FedAvg()
    updates = [ClientUpdate(0, {"w": torch.tensor([1.0, -2.0])}, 1), ClientUpdate(1, {"w": torch.tensor([5.0, 2.0])}, 3)]
    new = strategy.aggregate(1, {"w": torch.tensor([10.0, 10.0])}, updates, strategy.combine)
    # (1 * [1, -2] + 3 * [5, 2]) / 4 = [4, 1]; the plain mean would be [3, 0]
    assert torch.allclose(new["w"], torch.tensor([14.0, 11.0]))


class WatchedFedAvg(FedAvg):
    """FedAvg that keeps what the engine handed its aggregate, for the test to recompute."""

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        new = super().aggregate(server_round, global_state, updates, combine)
        self.seen = (global_state, [dataclasses.replace(u) for u in updates], new)
        return new


def test_a_run_weights_each_client_by_its_true_partition_size(tmp_path: Path) -> None:
    cfg = make_cfg("rounds=1", "num_clients=3", "clients_per_round=3", "partition=dirichlet", "partition.alpha=0.5")
    ctx = RunContext.from_config(cfg)
    sizes = {cid: len(ctx.client_data(cid)[1]) for cid in range(3)}
    assert len(set(sizes.values())) == 3, sizes  # unequal, so a plain mean would differ
    parts = dataclasses.replace(build_components(cfg), strategy=WatchedFedAvg())
    check_fit(parts, ctx)
    simulate(cfg, tmp_path, progress=False, ctx=ctx, parts=parts)
    start, updates, new = parts.strategy.seen
    assert {u.client_id: u.num_examples for u in updates} == sizes
    total = sum(sizes.values())
    for k in start:
        expected = start[k] + sum(u.update[k] * (sizes[u.client_id] / total) for u in updates)
        assert torch.allclose(new[k], expected, atol=1e-6), k


@pytest.mark.parametrize("mu", [0.5, 2.0])
def test_fedprox_one_step_away_from_the_global_model_matches_hand_computation(mu: float) -> None:
    """One SGD step from local weights w0 != w_global: w1 = w0 - lr (grad CE(w0) + mu (w0 - w_global))."""
    torch.manual_seed(0)
    w_global, b_global = torch.randn(2, 2), torch.randn(2)
    w0, b0 = w_global + torch.randn(2, 2), b_global + torch.randn(2)
    x, y, lr = torch.tensor([0.7, -1.3]), 1, 0.1
    task = LocalTask(
        round=1, client_id=0, model=linear_model(w0, b0), global_state={"weight": w_global, "bias": b_global},
        x=x.unsqueeze(0), y=torch.tensor([y]), lr=lr, local_epochs=1, batch_size=1,
        generator=torch.Generator().manual_seed(0), client_state=ClientState(RecordDict()),
    )
    delta = FedProx(mu=mu).local_update(task).update
    gw, gb = ce_grad(w0, b0, x, y)
    w1 = w0 - lr * (gw + mu * (w0 - w_global))
    b1 = b0 - lr * (gb + mu * (b0 - b_global))
    assert torch.allclose(delta["weight"], w1 - w_global, atol=1e-6)
    assert torch.allclose(delta["bias"], b1 - b_global, atol=1e-6)
