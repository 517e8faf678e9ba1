"""FedProx: FedAvg with a proximal term that keeps local models near the global one."""

from __future__ import annotations

import torch

from fedsim.params import check_range
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import LocalTask
from fedsim.training import LossTerm, Params


class FedProx(FedAvg):
    """FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020):
    the local loss adds (mu/2)·||w - w_global||²; aggregation is FedAvg's.

    Flower's own ``flwr.serverapp.strategy.FedProx`` only ships ``proximal_mu`` to the
    clients and leaves the proximal term to the client code; here both halves live in one
    class so the same object runs on either backend.
    """

    def __init__(self, mu: float = 0.01) -> None:
        check_range("strategy.mu", mu, low=0)
        self.mu = mu

    def loss_terms(self, task: LocalTask) -> tuple[LossTerm, ...]:
        anchor = {n: task.global_state[n] for n in task.trainable()}

        def proximal(params: Params) -> torch.Tensor:
            return 0.5 * self.mu * sum((p - anchor[n]).pow(2).sum() for n, p in params.items())

        return (proximal,)
