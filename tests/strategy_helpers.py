"""Shared helpers of the strategy tests: an end-to-end run, and a linear model with its hand-written gradient."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedsim.engine.simulation import simulate
from fedsim.state import ClientState, Tensors
from fedsim.strategy import LocalTask
from poisoning_helpers import make_cfg


def run_rounds(out_dir: Path, *overrides: str) -> list[dict[str, Any]]:
    """Run ``make_cfg(*overrides)`` into ``out_dir``; returns the per-round records."""
    simulate(make_cfg(*overrides), out_dir, progress=False)
    return [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]


class LinearClassifier(nn.Linear):
    """:func:`linear_model`'s module, built as a model config node builds one (from the input shape and class count)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(input_shape[0], num_classes)


def linear_model(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A 2-in, 2-out linear classifier with the given parameters."""
    model = nn.Linear(2, 2)
    model.load_state_dict({"weight": weight.clone(), "bias": bias.clone()})
    return model


def ce_grad(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d/d(w, b) of -log softmax(w x + b)[y], written out: (p - onehot) x^T and p - onehot."""
    z = w @ x + b
    p = torch.exp(z - z.max()) / torch.exp(z - z.max()).sum()
    err = p - torch.nn.functional.one_hot(torch.tensor(y), 2).float()
    return torch.outer(err, x), err


def one_sample_task(
    cid: int, x: torch.Tensor, y: int, state: Tensors, client_state: ClientState, server_round: int, lr: float
) -> LocalTask:
    """A local task of one sample, one epoch, batch 1 (so exactly one step) on :func:`linear_model`."""
    return LocalTask(
        round=server_round,
        client_id=cid,
        model=linear_model(state["weight"], state["bias"]),
        global_state=state,
        x=x.unsqueeze(0),
        y=torch.tensor([y]),
        lr=lr,
        local_epochs=1,
        batch_size=1,
        generator=torch.Generator().manual_seed(0),
        client_state=client_state,
    )
