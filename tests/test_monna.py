"""MoNNA: the momentum half step and the nearest-neighbour mix against hand computations; robustness to faulty nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import RecordDict

from types import SimpleNamespace

from fedsim.attack import Attack
from fedsim.engine.context import ModelFactory
from fedsim.engine.harness import Truth, score_models
from fedsim.evaluation import evaluate
from fedsim.state import ClientState
from fedsim.strategies.monna import MOMENTUM_KEY, MoNNA
from fedsim.strategy import ClientUpdate
from strategy_helpers import ce_grad, linear_model, one_sample_task, run_rounds

BETA, WD, LR, DECAY_ROUNDS = 0.9, 0.01, 0.5, 4.0


@pytest.mark.parametrize(("every", "done"), [(1, 2), (2, 2), (50, 0)])  # round 3: 2 steps done, rounded down to `every`
def test_monna_one_step_two_clients_matches_hand_computation(every: int, done: int) -> None:
    strategy = MoNNA(num_clients=2, clients_per_round=2, f=0, beta=BETA, weight_decay=WD, lr_decay_rounds=DECAY_ROUNDS,
                     lr_decay_every=every)
    w0, b0 = torch.tensor([[0.5, -1.0], [0.2, 0.3]]), torch.tensor([0.1, -0.2])
    state = {"weight": w0, "bias": b0}
    data = [(torch.tensor([1.0, 2.0]), 0), (torch.tensor([-1.5, 0.5]), 1)]
    prior = {"weight": torch.tensor([[0.3, -0.1], [0.0, 0.4]]), "bias": torch.tensor([-0.2, 0.2])}
    states = [ClientState(RecordDict()), ClientState(RecordDict())]
    states[1].put(MOMENTUM_KEY, prior)  # node 1 carries momentum from earlier rounds
    server_round = 3
    gamma = LR / (1 + done / DECAY_ROUNDS)
    updates = []
    for cid, ((x, y), cs) in enumerate(zip(data, states)):
        m = cs.get(MOMENTUM_KEY) or {k: torch.zeros_like(v) for k, v in state.items()}
        gw, gb = ce_grad(w0, b0, x, y)
        mw, mb = BETA * m["weight"] + (1 - BETA) * (gw + WD * w0), BETA * m["bias"] + (1 - BETA) * (gb + WD * b0)
        result = strategy.local_update(one_sample_task(cid, x, y, state, cs, server_round, LR))
        torch.testing.assert_close(result.update["weight"], w0 - gamma * mw)  # the half-step model, not a delta
        torch.testing.assert_close(result.update["bias"], b0 - gamma * mb)
        torch.testing.assert_close(cs.get(MOMENTUM_KEY), {"weight": mw, "bias": mb})
        updates.append(ClientUpdate(cid, result.update, 1))

    strategy.aggregate(server_round, state, updates, strategy.combine)  # f = 0: both nodes take the plain average
    for cid in (0, 1):
        for k in state:
            torch.testing.assert_close(strategy.payload_for(cid, state)[k], (updates[0].update[k] + updates[1].update[k]) / 2)


def test_monna_nearest_neighbour_mix_excludes_the_far_vectors() -> None:
    strategy = MoNNA(num_clients=3, clients_per_round=3, f=1)
    state = {"v": torch.zeros(2)}
    half = {0: [0.0, 0.0], 1: [1.0, 0.0], 2: [10.0, 10.0]}  # node 2 is far away (faulty)
    updates = [ClientUpdate(c, {"v": torch.tensor(v)}, 5) for c, v in half.items()]
    strategy.aggregate(1, state, updates, strategy.combine)
    # each node averages the n - f = 2 vectors nearest its own (itself included)
    torch.testing.assert_close(strategy.payload_for(0, state)["v"], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(strategy.payload_for(1, state)["v"], torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(strategy.payload_for(2, state)["v"], torch.tensor([5.5, 5.0]))  # |2-1| < |2-0|


def test_monna_reports_the_honest_nodes_mean_accuracy() -> None:
    strategy = MoNNA(num_clients=2, clients_per_round=2, f=0)
    good = {"weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "bias": torch.zeros(2)}
    bad = {"weight": -good["weight"], "bias": torch.zeros(2)}
    strategy.node_models = {0: good, 1: bad}
    x, y = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0]]), torch.tensor([0, 1, 0])
    models = ModelFactory({"_target_": "strategy_helpers.LinearClassifier"}, (2,), 2, seed=0, device=torch.device("cpu"))
    run = SimpleNamespace(test_data=lambda: (x, y), new_model=models)
    node_1_attacks = Truth(("benign", "malicious"), ("benign", "sign_flip"))
    assert score_models(run, strategy, Attack(), node_1_attacks, bad, {})["test_acc"] == 1.0  # only node 0 is honest
    both = score_models(run, strategy, Attack(), Truth(("benign",) * 2, ("benign",) * 2), bad, {})
    assert both["test_acc"] == pytest.approx(0.5)
    assert both["test_loss"] == pytest.approx(
        (evaluate(linear_model(**good), x, y)["test_loss"] + evaluate(linear_model(**bad), x, y)["test_loss"]) / 2
    )


def test_monna_invalid_config_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"strategy.clients_per_round=3"):
        MoNNA(num_clients=4, clients_per_round=3, f=1)
    with pytest.raises(ValueError, match=r"strategy.f=2: must be >= 0 and < num_clients/2"):
        MoNNA(num_clients=4, clients_per_round=4, f=2)
    with pytest.raises(ValueError, match=r"strategy.beta=1"):
        MoNNA(num_clients=4, clients_per_round=4, f=1, beta=1)


def test_monna_survives_sign_flipping_nodes_where_plain_averaging_collapses(tmp_path: Path) -> None:
    """Paper effect, small: 7 nodes, 2 flip the sign of the model they broadcast. D-SGD
    (f=0) collapses to chance; MoNNA (f=2) keeps learning (measured 0.10 vs 0.70 at round 30)."""
    common = ("strategy=monna", "num_clients=7", "clients_per_round=7", "batch_size=25", "lr=0.75", "rounds=30",
              "attack=sign_flip", "attack.fraction=null", "attack.count=2")
    dsgd = run_rounds(tmp_path / "dsgd", *common, "strategy.f=0")[-1]["test_acc"]
    monna = run_rounds(tmp_path / "monna", *common, "strategy.f=2")[-1]["test_acc"]
    assert dsgd < 0.2 and monna > 0.5, (dsgd, monna)


def test_reference_reception_gives_an_honest_node_itself_all_byzantines_and_n_minus_2f_minus_1_honest() -> None:
    from fedsim.network import AdversarialDelivery

    byzantine = frozenset({10, 11, 12})
    network = AdversarialDelivery(byzantine, seed=0)
    senders = list(range(13))
    draws = set()
    for receiver in (0, 4):
        got = network.received(5, receiver, senders)
        assert len(got) == 13 - 3 and receiver in got and byzantine <= set(got)
        assert len([s for s in got if s not in byzantine and s != receiver]) == 13 - 2 * 3 - 1
        assert network.received(5, receiver, senders) == got  # seeded by (round, receiver)
        draws.add(tuple(got))
    assert network.received(6, 0, senders) != network.received(5, 0, senders) or len(draws) == 2
    assert network.received(5, 11, senders) == senders  # a Byzantine receiver hears everyone


def test_monna_under_the_reference_network_keeps_the_n_minus_2f_nearest_of_what_it_receives() -> None:
    from fedsim.network import AdversarialDelivery

    strategy = MoNNA(num_clients=7, clients_per_round=7, f=2)
    strategy.bind_network(AdversarialDelivery(frozenset({5, 6}), seed=0))
    state = {"w": torch.zeros(1)}
    updates = [ClientUpdate(c, {"w": torch.tensor([float(c)])}, 1) for c in range(5)]
    updates += [ClientUpdate(5, {"w": torch.tensor([100.0])}, 1), ClientUpdate(6, {"w": torch.tensor([-100.0])}, 1)]
    strategy.aggregate(1, state, updates, strategy.combine)
    heard = strategy.network.received(1, 0, list(range(7)))  # q = 5: itself, 5, 6 and two honest
    honest_heard = sorted(float(c) for c in heard if c < 5)
    torch.testing.assert_close(strategy.node_models[0]["w"], torch.tensor([sum(honest_heard) / 3]))  # keeps q - f = 3
    trimmed = MoNNA(num_clients=7, clients_per_round=7, f=2, reception="complete", rule="trimmed_mean")
    trimmed.aggregate(1, state, updates, trimmed.combine)
    torch.testing.assert_close(trimmed.node_models[0]["w"], torch.tensor([2.0]))  # drops 2 from each end of 7
