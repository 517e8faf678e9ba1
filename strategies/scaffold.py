"""SCAFFOLD: client control variates correct the drift of local steps."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.params import check_range
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, Combine, LocalResult, LocalTask, Strategy, uniform_mean
from fedsim.training import Params

CONTROL = "control."  # upload keys of the control-variate change, one per model parameter


class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning", ICML 2020), option II. Client i keeps its control variate c_i in its client state; the
    server keeps c and sends it with every payload. Each local step uses grad f(y) + c - c_i (then
    the run's optimizer: clipping and weight decay as configured); after K steps at lr eta,
    c_i+ = c_i - c + (x - y) / (K eta). The client uploads (y - x, c_i+ - c_i), as in the paper's
    Algorithm 1 (twice the model's uplink; FedSpeed's reference simulator computes the second half
    on the server instead). The server sets x += server_lr * mean(y - x) and
    c += (|S| / N) * mean(c_i+ - c_i), both means uniform over the aggregated clients.
    """

    persistent = ("control",)

    def __init__(self, num_clients: int, server_lr: float = 1.0) -> None:
        check_range("strategy.num_clients", num_clients, low=1, integer=True)
        check_range("strategy.server_lr", server_lr, low=0, low_open=True)
        self.num_clients, self.server_lr = num_clients, server_lr
        self.control: Tensors = {}  # the server's c (empty: zero)
        self.parameter_names: tuple[str, ...] = ()

    def init_global(self, model: nn.Module) -> Tensors:
        self.control = {}
        self.parameter_names = tuple(name for name, _ in model.named_parameters())
        return super().init_global(model)

    def extra_for(self, client_id: int) -> Tensors:
        return self.control

    def upload_shapes(self, global_state: Tensors) -> dict[str, tuple[int, ...]]:
        model = super().upload_shapes(global_state)
        return {**model, **{CONTROL + n: model[n] for n in self.parameter_names}}

    def upload_dtypes(self, global_state: Tensors) -> dict[str, torch.dtype]:
        return {**super().upload_dtypes(global_state), **{CONTROL + n: global_state[n].dtype for n in self.parameter_names}}

    def combine(self, updates: list[ClientUpdate]) -> Tensors:
        return uniform_mean(updates)

    # Client side.

    def local_update(self, task: LocalTask) -> LocalResult:
        params = task.trainable()
        c = {n: task.extra.get(n, torch.zeros_like(p)) for n, p in params.items()}
        c_i = task.client_state.get("scaffold.c_i") or {n: torch.zeros_like(p) for n, p in params.items()}

        def corrected(_: Params, grads: Params) -> Params:
            return {n: g + c[n] - c_i[n] for n, g in grads.items()}

        trained = self.fit(task, grad_hooks=(corrected,))
        delta = task.delta(trained.params)
        scale = 1.0 / (max(trained.steps, 1) * task.lr)
        c_i_new = {n: c_i[n] - c[n] - delta[n] * scale for n in params}
        task.client_state.put("scaffold.c_i", c_i_new)
        update = {**delta, **{CONTROL + n: c_i_new[n] - c_i[n] for n in params}}
        return LocalResult(update, len(task.y), {"train_loss": trained.mean_loss})

    # Server side.

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        mean = combine(updates)
        share = len(updates) / self.num_clients
        self.control = {n: self.control.get(n, torch.zeros_like(mean[CONTROL + n])) + share * mean[CONTROL + n]
                        for n in self.parameter_names}
        return {k: w + self.server_lr * mean[k] for k, w in global_state.items()}
