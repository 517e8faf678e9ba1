"""The server's own training on a small clean root dataset (the trust anchor of FLTrust, Cao et al.).

A defense that asks for one (:meth:`fedsim.defense.Defense.root_examples` > 0) gets, each round
before screening, the update the server computes from the current global model on ``n`` training
examples drawn once from the training split (seeded; never the test split, which scores the run).
The server trains as a plain client does: the run's optimizer, learning rate, local epochs, batch
size and ``local_steps``, the model's cross-entropy, no strategy-specific terms and no codec
(FLTrust's ModelUpdate is plain SGD on the root data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsim.engine.context import RunContext
from fedsim.seeding import numpy_rng, torch_generator
from fedsim.state import ClientState, Tensors
from fedsim.strategy import LocalTask, Strategy, model_holding
from fedsim.training import OptimizerConfig


@dataclass(frozen=True)
class RootTraining:
    """The root dataset (its indices into the training split and its tensors, built once) and the
    server's local update on it."""

    ctx: RunContext
    optimizer: OptimizerConfig
    indices: np.ndarray
    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def drawn(cls, ctx: RunContext, optimizer: OptimizerConfig, size: int) -> "RootTraining":
        """``size`` training examples drawn without replacement, seeded by the run seed."""
        indices = np.sort(numpy_rng(ctx.seed, "root-data").choice(len(ctx.data.y_train), size=size, replace=False))
        return cls(ctx, optimizer, indices, *ctx.train_examples(indices))

    def update(self, server_round: int, global_state: Tensors, lr: float) -> Tensors:
        """The server's model delta after local training from ``global_state`` on the root data."""
        ctx = self.ctx
        task = LocalTask(
            round=server_round,
            client_id=-1,
            model=model_holding(global_state, ctx.new_model),
            global_state=global_state,
            x=self.x,
            y=self.y,
            lr=lr,
            generator=torch_generator(ctx.seed, "root-train", server_round, device=str(ctx.device)),
            client_state=ClientState(device=str(ctx.device)),
            optimizer=self.optimizer,
            **ctx.local_schedule(),
        )
        return task.delta(Strategy.fit(task).params)
