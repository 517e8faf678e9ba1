"""FedProx: FedAvg with a proximal term that keeps local models near the global one."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.strategy import LocalTask, LossFn, cross_entropy
from fedsim.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020):
    the local loss adds (mu/2)·||w - w_global||²; aggregation is FedAvg's.

    Flower's own ``flwr.serverapp.strategy.FedProx`` only ships ``proximal_mu`` to the
    clients and leaves the proximal term to the client code; here both halves live in one
    class so the same object runs on either backend.
    """

    def __init__(self, mu: float = 0.01) -> None:
        if mu < 0:
            raise ValueError(f"strategy.mu={mu} must be >= 0")
        self.mu = mu

    def local_loss(self, task: LocalTask) -> LossFn:
        anchors = [(p, task.global_state[name]) for name, p in task.model.named_parameters()]

        def proximal(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            drift = sum((p - g).pow(2).sum() for p, g in anchors)
            return cross_entropy(model, x, y) + 0.5 * self.mu * drift

        return proximal
