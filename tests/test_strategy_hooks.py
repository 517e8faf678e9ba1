"""The per-client payload and strategy-level evaluation hooks: defaults keep the shared-global-model behaviour."""

from __future__ import annotations

from pathlib import Path

import torch

from strategy_helpers import run_rounds
from fedsim.evaluation import evaluate
from fedsim.models import MLP
from fedsim.strategies.fedavg import FedAvg


def test_default_payload_is_the_global_state() -> None:
    state = {"w": torch.ones(2)}
    assert FedAvg().payload_for(3, state) is state


def test_default_evaluate_scores_the_global_model() -> None:
    torch.manual_seed(0)
    model = MLP((1, 2, 2), 3, hidden=(4,))
    state = FedAvg().init_global(model)
    x, y = torch.randn(20, 1, 2, 2), torch.randint(0, 3, (20,))
    scored = FedAvg().scored_models(state, lambda: MLP((1, 2, 2), 3, hidden=(4,)), {})
    assert list(scored) == [None]
    assert evaluate(scored[None].model, x, y) == evaluate(model, x, y)


def test_default_attack_model_is_the_model_holding_the_global_state() -> None:
    torch.manual_seed(0)
    state = FedAvg().init_global(MLP((1, 2, 2), 3, hidden=(4,)))
    model = FedAvg().attack_model(state, lambda: MLP((1, 2, 2), 3, hidden=(4,)))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_shared_payload_bytes_down_counts_every_sampled_client(tmp_path: Path) -> None:
    rec = run_rounds(tmp_path, "backend=inline", "dataset=digits", "rounds=1", "num_clients=4", "clients_per_round=3")[0]
    params = (64 * 32 + 32 + 32 * 10 + 10) * 4  # MLP(hidden=[32]) on 8x8 digits, float32
    assert rec["bytes_down"] == 3 * params
