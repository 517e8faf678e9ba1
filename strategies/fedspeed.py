"""FedSpeed: prox-corrected, perturbation-merged local steps; the server adds back the mean correction."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.params import check_range
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, Combine, LocalResult, LocalTask, Strategy, uniform_mean
from fedsim.training import Params, sam_gradient


class FedSpeed(Strategy):
    """FedSpeed (Sun et al., "FedSpeed: Larger Local Interval, Less Communication Round, and
    Higher Generalization Accuracy", ICLR 2023; reference code woodenchild95/FL-Simulator).

    Each client i has a prox-correction h_i (zero at start). As in the reference code, the
    server keeps every h_i and sends it with the client's payload (counted in ``bytes_down``),
    so the server's sum of the h_i is exact whatever happens to an upload. Each local step on a
    batch: g1 = grad f(w); g2 = grad f(w + rho·g1/||g1||); g = (1-alpha)·g1 + alpha·g2;
    d = g + lamb·(h_i - w_t), clipped to ``max_grad_norm``; then the optimizer step with weight
    decay ``weight_decay + lamb`` (added after clipping, as the reference's SGD does), so the
    full step is g + lamb·(w - w_t + h_i) + weight_decay·w. The local lr decays by ``lr_decay``
    per round. The client uploads w - w_t; the server sets h_i += w_i - w_t for every
    aggregated client and w_{t+1} = combine(w_i - w_t) + w_t + mean over ALL clients of h_i.
    The combine defaults to the uniform mean of the reference; a robust aggregator may replace it.

    ``lamb`` is the prox weight (the paper's 1/lambda, the reference code's ``lamb``).
    """

    persistent = ("corrections",)

    def __init__(
        self,
        num_clients: int,
        rho: float = 0.1,
        alpha: float = 1.0,
        lamb: float = 0.1,
        weight_decay: float = 1e-3,
        max_grad_norm: float = 10.0,
        lr_decay: float = 0.998,
    ) -> None:
        check_range("strategy.num_clients", num_clients, low=1, integer=True)
        check_range("strategy.rho", rho, low=0)
        check_range("strategy.alpha", alpha, 0, 1)
        check_range("strategy.lamb", lamb, low=0)
        check_range("strategy.weight_decay", weight_decay, low=0)
        check_range("strategy.max_grad_norm", max_grad_norm, low=0, low_open=True)
        check_range("strategy.lr_decay", lr_decay, 0, 1, low_open=True)
        self.num_clients = num_clients
        self.rho, self.alpha, self.lamb = rho, alpha, lamb
        self.weight_decay, self.max_grad_norm, self.lr_decay = weight_decay, max_grad_norm, lr_decay
        self.corrections: dict[int, Tensors] = {}  # server side: h_i of every client that has taken part
        self.parameter_names: tuple[str, ...] = ()  # the model's parameters (buffers carry no correction)

    def init_global(self, model: nn.Module) -> Tensors:
        self.corrections = {}
        self.parameter_names = tuple(name for name, _ in model.named_parameters())
        return super().init_global(model)

    def correction_sum(self) -> Tensors:
        """The sum over all clients of h_i (clients not yet seen hold h_i = 0), derived, never stored."""
        total: Tensors = {}
        for h in self.corrections.values():
            for name, t in h.items():
                total[name] = total[name] + t if name in total else t.clone()
        return total

    def extra_for(self, client_id: int) -> Tensors:
        return self.corrections.get(client_id, {})

    def combine(self, updates: list[ClientUpdate]) -> Tensors:
        return uniform_mean(updates)

    # Client side.

    def local_update(self, task: LocalTask) -> LocalResult:
        params = task.trainable()
        anchor = {n: task.global_state[n] for n in params}
        h = {n: task.extra.get(n, torch.zeros_like(p)) for n, p in params.items()}

        def correction(_: Params, grads: Params) -> Params:
            return {n: g + self.lamb * (h[n] - anchor[n]) for n, g in grads.items()}

        trained = self.fit(
            task,
            lr=task.lr * self.lr_decay ** (task.round - 1),
            optimizer=task.optimizer.replace(weight_decay=self.weight_decay + self.lamb, grad_clip=self.max_grad_norm),
            gradient=sam_gradient(self.rho, self.alpha),
            grad_hooks=(correction,),
        )
        return LocalResult(task.delta(trained.params), len(task.y), {"train_loss": trained.mean_loss})

    # Server side.

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        for u in updates:
            h = self.corrections.setdefault(u.client_id, {})
            for name in self.parameter_names:
                h[name] = h[name] + u.update[name] if name in h else u.update[name].clone()
        mean_delta, h_sum = combine(updates), self.correction_sum()
        return {name: w + mean_delta[name] + (h_sum[name] / self.num_clients if name in h_sum else 0.0) for name, w in global_state.items()}
