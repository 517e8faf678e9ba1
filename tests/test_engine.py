"""End-to-end runs of the core engine on the inline and Ray backends."""

from __future__ import annotations

import json
import sys
import importlib
import textwrap
from typing import ClassVar

import pytest

from conftest import metrics_only
from fedsim.attack import SelectedClientsAttack
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import LocalResult


def test_inline_run_writes_results_and_learns(run_sim):
    summary, rounds, out = run_sim("rounds=3", "num_clients=5", "clients_per_round=5")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for key in ("test_acc", "test_loss", "train_loss", "bytes_up", "bytes_down", "wall_s", "clients_sampled"):
        assert key in rounds[0]
    assert rounds[-1]["test_acc"] > 0.8  # digits MLP, 3 rounds of FedAvg
    assert rounds[-1]["test_loss"] < rounds[0]["test_loss"]
    assert json.loads((out / "summary.json").read_text())["final_test_acc"] == rounds[-1]["test_acc"]
    assert (out / "curves.svg").stat().st_size > 1000
    # dense float32 deltas of the MLP (64*200 + 200 + 200*10 + 10 parameters) from 5 clients
    assert rounds[0]["bytes_up"] == 5 * 4 * (64 * 200 + 200 + 200 * 10 + 10)


def test_same_seed_same_metrics_different_seed_different(run_sim):
    _, first, _ = run_sim("seed=3", "clients_per_round=2")
    _, again, _ = run_sim("seed=3", "clients_per_round=2")
    _, other, _ = run_sim("seed=4", "clients_per_round=2")
    assert metrics_only(first) == metrics_only(again)
    assert metrics_only(first) != metrics_only(other)


def test_client_sampling_is_seeded_subset(run_sim):
    _, rounds, _ = run_sim("num_clients=6", "clients_per_round=2", "rounds=3")
    sampled = [sorted(map(int, r["clients"])) for r in rounds]
    assert all(len(s) == 2 for s in sampled)
    assert len({tuple(s) for s in sampled}) > 1  # different clients in different rounds


def test_fedprox_runs_and_differs_from_fedavg(run_sim):
    _, fedavg, _ = run_sim("partition=dirichlet", "partition.alpha=0.3")
    _, fedprox, _ = run_sim("partition=dirichlet", "partition.alpha=0.3", "strategy=fedprox", "strategy.mu=1.0")
    assert fedprox[-1]["test_acc"] > 0.5
    assert fedprox[-1]["test_loss"] != fedavg[-1]["test_loss"]


def test_cnn_model_trains(run_sim):
    _, rounds, _ = run_sim("model=cnn", "model.channels=[8]", "rounds=1")
    assert rounds[0]["test_acc"] > 0.3


def test_custom_strategy_from_user_module(run_sim, tmp_path, monkeypatch):
    module = tmp_path / "my_strategies.py"
    module.write_text(
        textwrap.dedent(
            '''
            from fedsim.strategy import LocalResult, Strategy

            class HalfStepFedAvg(Strategy):
                """A user's strategy: FedAvg whose server applies half the mean update."""

                calls = 0

                def local_update(self, task):
                    trained = self.fit(task)
                    return LocalResult(task.delta(trained.params), len(task.y), {"train_loss": trained.mean_loss})

                def aggregate(self, server_round, global_state, updates, combine):
                    type(self).calls += 1
                    mean = combine(updates)
                    return {k: v + 0.5 * mean[k] for k, v in global_state.items()}
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _, custom, _ = run_sim("strategy._target_=my_strategies.HalfStepFedAvg")
    _, fedavg, _ = run_sim()
    assert sys.modules["my_strategies"].HalfStepFedAvg.calls == 2
    assert custom[-1]["test_loss"] != fedavg[-1]["test_loss"]


@pytest.mark.parametrize("client_cpus", [1, 2])
def test_ray_backend_matches_inline(run_sim, client_cpus):
    """Flower's Ray simulation engine gives the inline backend's metrics, whatever the worker count."""
    common = ("num_clients=4", "clients_per_round=3", "rounds=2")
    _, inline, _ = run_sim(*common)
    _, ray, _ = run_sim(*common, "backend=ray", f"backend.client_cpus={client_cpus}", "backend.num_cpus=2")
    assert metrics_only(ray) == metrics_only(inline)


class SelfCountingFedAvg(FedAvg):
    """A strategy that changes itself on the client: it counts its local updates and divides the
    update by that count. Were a client-side instance carried from one message to the next (or
    shared with the server, as inline once did), later clients would upload shrunken updates."""

    def __init__(self) -> None:
        self.local_updates = 0

    def local_update(self, task):
        self.local_updates += 1
        result = super().local_update(task)
        return LocalResult({k: v / self.local_updates for k, v in result.update.items()}, result.num_examples, result.metrics)


def test_a_self_mutating_client_component_gives_the_same_results_inline_and_on_ray(run_sim):
    """Each message gets fresh client-side components on every backend, so the counter is always 1
    and the run is plain FedAvg's, inline and on two Ray workers alike."""
    common = ("num_clients=4", "clients_per_round=3", "rounds=2")
    mutating = "strategy._target_=tests.test_engine.SelfCountingFedAvg"
    _, fedavg, _ = run_sim(*common)
    _, inline, _ = run_sim(*common, mutating)
    _, ray, _ = run_sim(*common, mutating, "backend=ray", "backend.client_cpus=1", "backend.num_cpus=2")
    assert metrics_only(inline) == metrics_only(ray) == metrics_only(fedavg)


class NegatedMean(SelectedClientsAttack):
    """A trivial omniscient attacker for the server-side adversary slot: its clients upload -mean(honest)."""

    name = "negated_mean"
    seen: ClassVar[list[tuple[int, int]]] = []

    def forge(self, server_round, honest, malicious):
        type(self).seen.append((len(honest), len(malicious)))
        mean = {k: sum(h[k] for h in honest) / len(honest) for k in honest[0]}
        return [{k: -v for k, v in mean.items()} for _ in malicious]


def test_server_side_adversary_sees_the_honest_updates_and_writes_the_malicious_ones(run_sim):
    common = ("num_clients=4", "clients_per_round=4", "rounds=2")
    _, clean, _ = run_sim(*common)
    _, attacked, _ = run_sim(*common, "attack._target_=tests.test_engine.NegatedMean", "+attack.count=1")
    seen = importlib.import_module("tests.test_engine").NegatedMean.seen  # the class Hydra instantiated
    assert seen == [(3, 1), (3, 1)]  # every round: 3 honest updates seen, 1 upload written
    roles = [c["role"] for c in attacked[0]["clients"].values()]
    assert roles.count("malicious") == 1 and attacked[0]["clients_aggregated"] == 4
    assert attacked[-1]["test_loss"] > clean[-1]["test_loss"]  # the forged upload pulls against the honest mean
