"""FedAdam: Adam on the server, over the combined client update."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.params import check_range
from fedsim.state import Tensors
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import ClientUpdate, Combine


class FedAdam(FedAvg):
    """FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2): clients train
    as in FedAvg; with Delta the combined update, the server keeps m = beta1·m + (1 - beta1)·Delta and
    v = beta2·v + (1 - beta2)·Delta², and steps w += server_lr · m / (sqrt(v) + tau), with no bias
    correction (as the paper and FedSpeed's reference code, server/FedAdam.py). Defaults: beta1 0.9,
    beta2 0.99, tau 1e-3 (Reddi et al.); the server lr is the paper's tuned value for its image tasks,
    0.01 (the reference uses epsilon 0.01 and a tuned global lr)."""

    persistent = ("m", "v")

    def __init__(self, server_lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        check_range("strategy.server_lr", server_lr, low=0, low_open=True)
        check_range("strategy.beta1", beta1, 0, 1, high_open=True)
        check_range("strategy.beta2", beta2, 0, 1, high_open=True)
        check_range("strategy.tau", tau, low=0, low_open=True)
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: Tensors = {}
        self.v: Tensors = {}

    def init_global(self, model: nn.Module) -> Tensors:
        self.m, self.v = {}, {}
        return super().init_global(model)

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        delta = combine(updates)
        self.m = {k: self.beta1 * self.m.get(k, torch.zeros_like(d)) + (1 - self.beta1) * d for k, d in delta.items()}
        self.v = {k: self.beta2 * self.v.get(k, torch.zeros_like(d)) + (1 - self.beta2) * d * d for k, d in delta.items()}
        return {k: w + self.server_lr * self.m[k] / (self.v[k].sqrt() + self.tau) if k in delta else w for k, w in global_state.items()}
