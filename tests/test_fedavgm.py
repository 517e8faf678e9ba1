"""FedAvgM's server momentum against a hand computation, and minibatch FedSGD's one step a round."""

from __future__ import annotations

import pytest
import torch

from fedsim.strategies.fedavgm import FedAvgM
from fedsim.strategy import ClientUpdate, weighted_mean


def test_server_momentum_accumulates_the_combined_deltas() -> None:
    strategy = FedAvgM(server_lr=0.5, server_momentum=0.9)
    state = strategy.init_global(torch.nn.Linear(2, 1, bias=False))
    w0 = state["weight"].clone()
    deltas = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])]
    for delta in deltas:
        state = strategy.aggregate(1, state, [ClientUpdate(0, {"weight": delta}, 3), ClientUpdate(1, {"weight": delta}, 1)],
                                   weighted_mean)
    m1 = deltas[0]
    m2 = 0.9 * m1 + deltas[1]
    torch.testing.assert_close(state["weight"], w0 + 0.5 * m1 + 0.5 * m2)
    assert set(strategy.state_dict()) == {"momentum"}  # checkpointed


def test_fedavgm_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="strategy.server_momentum=1"):
        FedAvgM(server_momentum=1)
    with pytest.raises(ValueError, match="strategy.server_lr=0"):
        FedAvgM(server_lr=0)


def test_local_steps_caps_the_mini_batches_of_a_round(run_sim) -> None:
    _, one_step, _ = run_sim("local_steps=1", "batch_size=8", "local_epochs=3", "rounds=1")
    _, all_steps, _ = run_sim("batch_size=8", "local_epochs=3", "rounds=1")
    _, capped_at_all, _ = run_sim("local_steps=100000", "batch_size=8", "local_epochs=3", "rounds=1")
    assert one_step[0]["test_loss"] != all_steps[0]["test_loss"]
    assert capped_at_all[0]["test_loss"] == all_steps[0]["test_loss"]  # a cap above the batch count changes nothing


def test_local_steps_yields_that_many_batches() -> None:
    from flwr.app import RecordDict

    from fedsim.state import ClientState
    from fedsim.strategy import LocalTask

    x, y = torch.zeros(20, 2), torch.zeros(20, dtype=torch.long)
    for cap, expected in ((1, 1), (4, 4), (None, 9), (50, 9)):  # 3 epochs of ceil(20 / 8) = 3 batches
        task = LocalTask(1, 0, torch.nn.Linear(2, 2), {}, x, y, 0.1, 3, 8, torch.Generator().manual_seed(0),
                         ClientState(RecordDict()), local_steps=cap)
        assert len(list(task.batches())) == expected
