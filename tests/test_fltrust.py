"""FLTrust: the trust-weighted, norm-rescaled aggregate by hand; the server's root training; an engine
run in which a majority of attackers is outvoted by the server's own update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.defenses.fltrust import FLTrust
from fedsim.engine.context import RunContext
from fedsim.engine.root_training import RootTraining
from fedsim.params import ParamError
from fedsim.state import ClientState
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import ClientUpdate, LocalTask, model_holding
from fedsim.seeding import torch_generator
from fedsim.training import OptimizerConfig
from poisoning_helpers import make_cfg


def updates_of(*vectors: list[float]) -> list[ClientUpdate]:
    return [ClientUpdate(i, {"w": torch.tensor(v)}, 10 * (i + 1)) for i, v in enumerate(vectors)]


def test_trust_is_relu_cosine_and_every_update_is_rescaled_to_the_servers_norm() -> None:
    defense = FLTrust()
    defense.observe_root_update(1, {"w": torch.tensor([2.0, 0.0])})
    updates = updates_of([5.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0])
    verdict = defense.screen(1, updates)
    assert verdict.keep == [True, False, False, True]  # orthogonal and opposed: trust 0
    assert verdict.labels == ["benign", "malicious", "malicious", "benign"]
    aggregate = defense.combiner()(updates)["w"]
    # TS = (1, 0, 0, 1/sqrt 2); rescaled to norm 2: (2, 0) and (sqrt 2, sqrt 2); example counts ignored
    s = 1 / math.sqrt(2)
    expected = (torch.tensor([2.0, 0.0]) + s * torch.tensor([math.sqrt(2), math.sqrt(2)])) / (1 + s)
    assert torch.allclose(aggregate, expected, atol=1e-6)
    assert float(torch.linalg.vector_norm(aggregate)) <= 2.0 + 1e-6  # never longer than g0


def test_a_huge_update_in_the_servers_direction_counts_as_one_of_norm_g0() -> None:
    defense = FLTrust()
    defense.observe_root_update(1, {"w": torch.tensor([1.0, 1.0])})
    aggregate = defense.combiner()(updates_of([1e6, 1e6], [1.0, 1.0]))["w"]
    assert torch.allclose(aggregate, torch.tensor([1.0, 1.0]))


def test_no_trusted_update_leaves_the_model_where_it_is() -> None:
    defense = FLTrust()
    defense.observe_root_update(1, {"w": torch.tensor([1.0, 0.0])})
    assert torch.equal(defense.combiner()(updates_of([-1.0, 0.0]))["w"], torch.zeros(2))


def test_the_root_set_is_a_seeded_draw_from_the_training_split_trained_as_a_plain_client() -> None:
    ctx = RunContext.from_config(make_cfg("local_epochs=2"))
    optimizer = OptimizerConfig()
    root = RootTraining.drawn(ctx, optimizer, 100)
    assert len(np.unique(root.indices)) == 100 and root.indices.max() < len(ctx.data.y_train)
    assert np.array_equal(root.indices, RootTraining.drawn(ctx, optimizer, 100).indices)
    other_seed = RootTraining.drawn(RunContext.from_config(make_cfg("seed=1")), optimizer, 100)
    assert not np.array_equal(root.indices, other_seed.indices)

    strategy = FedAvg()
    state = strategy.init_global(ctx.new_model())
    g0 = root.update(3, state, lr=0.05)
    x, y = (torch.from_numpy(np.array(a[root.indices])) for a in (ctx.data.x_train, ctx.data.y_train))
    task = LocalTask(round=3, client_id=-1, model=model_holding(state, ctx.new_model), global_state=state, x=x, y=y, lr=0.05,
                     local_epochs=2, batch_size=int(ctx.cfg["batch_size"]), generator=torch_generator(ctx.seed, "root-train", 3),
                     client_state=ClientState(), optimizer=optimizer)
    plain = strategy.local_update(task).update
    assert all(torch.allclose(g0[k], plain[k]) for k in state) and any(bool(g0[k].abs().sum() > 0) for k in state)


def test_a_root_set_larger_than_the_training_data_is_one_line() -> None:
    ctx = RunContext.from_config(make_cfg())
    with pytest.raises(ParamError, match=r"defense.root_size=100000: must be at most the \d+ training examples"):
        FLTrust(root_size=100000).check_run(ctx.facts())


def test_fltrust_holds_against_a_majority_of_fall_of_empires_attackers(run_sim) -> None:
    """4 of 6 clients send -mean of the honest updates: FedAvg is pushed backwards; FLTrust gives them
    trust 0 (flagged in every round) and learns from the two honest clients."""
    attacked = ("attack=foe", "attack.count=4", "rounds=4", "num_clients=6", "clients_per_round=6")
    _, plain, _ = run_sim(*attacked)
    _, defended, _ = run_sim(*attacked, "defense=fltrust")
    assert defended[-1]["test_acc"] > plain[-1]["test_acc"] + 0.2, (defended[-1]["test_acc"], plain[-1]["test_acc"])
    assert all(r["detection"]["recall"] == 1.0 for r in defended)
