"""FedSpeed's baselines, one step each by hand: SCAFFOLD, FedDyn, FedSAM, FedAdam; and each through the engine."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict

from fedsim.state import ClientState
from fedsim.strategies.fedadam import FedAdam
from fedsim.strategies.feddyn import FedDyn
from fedsim.strategies.fedsam import FedSAM
from fedsim.strategies.scaffold import CONTROL, Scaffold
from fedsim.strategy import ClientUpdate
from strategy_helpers import ce_grad, one_sample_task, run_rounds

LR = 0.1
X, Y = torch.tensor([0.5, -1.5]), 1


def start_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {"weight": torch.randn(2, 2), "bias": torch.randn(2)}


def test_scaffold_one_step_and_server_update_match_hand_computation() -> None:
    state = start_state()
    strategy = Scaffold(num_clients=4)
    strategy.init_global(torch.nn.Linear(2, 2))
    c = {"weight": torch.full((2, 2), 0.3), "bias": torch.tensor([0.1, -0.2])}
    c_i = {"weight": torch.full((2, 2), -0.1), "bias": torch.tensor([0.4, 0.0])}
    client_state = ClientState(RecordDict())
    client_state.put("scaffold.c_i", c_i)
    task = one_sample_task(0, X, Y, state, client_state, 1, LR)
    task.extra = c
    update = strategy.local_update(task).update
    gw, gb = ce_grad(state["weight"], state["bias"], X, Y)
    grads = {"weight": gw, "bias": gb}
    for n in state:
        torch.testing.assert_close(update[n], -LR * (grads[n] + c[n] - c_i[n]))  # y - x after one corrected step
        # K = 1: c_i+ = c_i - c + (x - y) / lr = grad f(x)
        torch.testing.assert_close(client_state.get("scaffold.c_i")[n], grads[n])
        torch.testing.assert_close(update[CONTROL + n], grads[n] - c_i[n])

    strategy.control = {n: t.clone() for n, t in c.items()}
    other = {k: torch.ones_like(v) for k, v in update.items()}
    new = strategy.aggregate(1, state, [ClientUpdate(0, update, 3), ClientUpdate(1, other, 1)], strategy.combine)
    for n in state:  # uniform means; c moves by |S|/N = 2/4 of the mean control change
        torch.testing.assert_close(new[n], state[n] + (update[n] + 1) / 2)
        torch.testing.assert_close(strategy.control[n], c[n] + 0.5 * (update[CONTROL + n] + 1) / 2)


def test_scaffold_uploads_its_control_change_beside_the_model_delta() -> None:
    state = start_state()
    strategy = Scaffold(num_clients=2)
    strategy.init_global(torch.nn.Linear(2, 2))
    shapes = strategy.upload_shapes(state)
    assert set(shapes) == {"weight", "bias", CONTROL + "weight", CONTROL + "bias"}
    assert shapes[CONTROL + "weight"] == (2, 2)


@pytest.mark.parametrize("server_round", [1, 3])
def test_feddyn_one_step_and_server_correction_match_hand_computation(server_round: int) -> None:
    state = start_state()
    lamb, wd, decay = 0.2, 0.01, 0.9
    strategy = FedDyn(num_clients=4, lamb=lamb, weight_decay=wd, max_grad_norm=1e6, lr_decay=decay)
    strategy.init_global(torch.nn.Linear(2, 2))
    h = {"weight": torch.full((2, 2), 0.05), "bias": torch.tensor([-0.1, 0.2])}
    task = one_sample_task(0, X, Y, state, ClientState(RecordDict()), server_round, LR)
    task.extra = h
    update = strategy.local_update(task).update
    gw, gb = ce_grad(state["weight"], state["bias"], X, Y)
    lr = LR * decay ** (server_round - 1)
    for n, g in (("weight", gw), ("bias", gb)):  # at w = w_t: g + lamb (w - w_t + h) + wd w = g + lamb h + wd w_t
        torch.testing.assert_close(update[n], -lr * (g + lamb * h[n] + wd * state[n]))

    strategy.corrections = {1: {n: t.clone() for n, t in h.items()}}  # client 1 took part before
    new = strategy.aggregate(server_round, state, [ClientUpdate(0, update, 5)], strategy.combine)
    for n in state:  # h_0 = update; w = w_t + update + (h_0 + h_1) / N
        torch.testing.assert_close(strategy.corrections[0][n], update[n])
        torch.testing.assert_close(new[n], state[n] + update[n] + (update[n] + h[n]) / 4)


def test_feddyn_ablations_drop_the_server_correction_or_flip_the_local_one() -> None:
    state, h = start_state(), {"weight": torch.full((2, 2), 0.05), "bias": torch.tensor([-0.1, 0.2])}
    gw, _ = ce_grad(state["weight"], state["bias"], X, Y)
    flipped = FedDyn(num_clients=2, lamb=0.2, weight_decay=0.0, max_grad_norm=1e6, correction_sign=-1)
    flipped.init_global(torch.nn.Linear(2, 2))
    task = one_sample_task(0, X, Y, state, ClientState(RecordDict()), 1, LR)
    task.extra = h
    # the correction -lamb (h - w_t) plus the decay lamb w_t: g - lamb h + 2 lamb w_t
    torch.testing.assert_close(flipped.local_update(task).update["weight"], -LR * (gw - 0.2 * h["weight"] + 0.4 * state["weight"]))
    bare = FedDyn(num_clients=2, server_correction=False)
    bare.init_global(torch.nn.Linear(2, 2))
    up = {k: torch.ones_like(v) for k, v in state.items()}
    new = bare.aggregate(1, state, [ClientUpdate(0, up, 1)], bare.combine)
    assert all(torch.equal(new[k], state[k] + 1) for k in state)  # no + mean(h)


def test_fedsam_steps_with_the_gradient_at_the_ascent_point() -> None:
    state, rho = start_state(), 0.3
    task = one_sample_task(0, X, Y, state, ClientState(RecordDict()), 1, LR)
    update = FedSAM(rho=rho).local_update(task).update
    gw, gb = ce_grad(state["weight"], state["bias"], X, Y)
    scale = rho / math.sqrt(float(gw.pow(2).sum() + gb.pow(2).sum()))
    pw, pb = ce_grad(state["weight"] + scale * gw, state["bias"] + scale * gb, X, Y)
    torch.testing.assert_close(update["weight"], -LR * pw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(update["bias"], -LR * pb, rtol=1e-5, atol=1e-6)


def test_fedadam_two_server_steps_match_hand_computation() -> None:
    strategy = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    strategy.init_global(torch.nn.Linear(1, 1, bias=False))
    w = {"w": torch.tensor([1.0, -2.0])}
    m = v = torch.zeros(2)
    for delta in (torch.tensor([0.5, -0.1]), torch.tensor([0.2, 0.3])):
        new = strategy.aggregate(1, w, [ClientUpdate(0, {"w": delta}, 1)], strategy.combine)
        m, v = 0.9 * m + 0.1 * delta, 0.99 * v + 0.01 * delta**2
        expected = w["w"] + 0.1 * m / (v.sqrt() + 1e-3)
        torch.testing.assert_close(new["w"], expected)
        w = new


@pytest.mark.parametrize("strategy", ["scaffold", "feddyn", "fedsam", "fedadam"])
def test_each_baseline_learns_through_the_engine(tmp_path: Path, strategy: str) -> None:
    records = run_rounds(tmp_path, f"strategy={strategy}", "rounds=4", "lr=0.1", "partition=dirichlet", "partition.alpha=0.5")
    assert records[-1]["test_acc"] > 0.6, [r["test_acc"] for r in records]
    if strategy == "scaffold":  # the uplink carries the control change too: twice the model's bytes
        model_bytes = records[0]["bytes_down"] / records[0]["clients_sampled"]
        assert all(c["bytes_up"] > 1.9 * model_bytes for c in records[0]["clients"].values())
