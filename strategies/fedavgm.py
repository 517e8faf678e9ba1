"""FedAvgM: FedAvg with server momentum on the combined update."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.params import check_range
from fedsim.state import Tensors
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import ClientUpdate, Combine


class FedAvgM(FedAvg):
    """FedAvgM (Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification", 2019): clients train as in FedAvg; the server keeps a momentum buffer
    m = server_momentum * m + combine(deltas) and steps w += server_lr * m. With one local step per
    round (``local_steps=1``) this is momentum SGD on the aggregated gradient, the server-side momentum
    of Gradient Dropping (Aji and Heafield, EMNLP 2017) in DGC's ablation."""

    persistent = ("momentum",)

    def __init__(self, server_lr: float = 1.0, server_momentum: float = 0.9) -> None:
        check_range("strategy.server_lr", server_lr, low=0, low_open=True)
        check_range("strategy.server_momentum", server_momentum, 0, 1, high_open=True)
        self.server_lr, self.server_momentum = server_lr, server_momentum
        self.momentum: Tensors = {}

    def init_global(self, model: nn.Module) -> Tensors:
        self.momentum = {}
        return super().init_global(model)

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        delta = combine(updates)
        self.momentum = {k: self.server_momentum * self.momentum.get(k, torch.zeros_like(d)) + d for k, d in delta.items()}
        return {k: w + self.server_lr * self.momentum[k] if k in self.momentum else w for k, w in global_state.items()}
