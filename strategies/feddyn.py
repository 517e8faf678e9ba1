"""FedDyn: a per-client dynamic regulariser, and the server adds back the mean correction."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.params import check_choice, check_range, check_that
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, Combine, LocalTask, OneLoopStrategy, uniform_mean
from fedsim.training import GradientFn, GradOffset, LocalTraining


class FedDyn(OneLoopStrategy):
    """FedDyn (Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021), in the
    parametrisation of FedSpeed's reference code (woodenchild95/FL-Simulator, client/feddyn.py,
    server/FedDyn.py). Client i has a correction h_i (in parameter units, zero at start; the paper's
    -grad L_i(theta_i^{t-1}) / alpha), which the server keeps and sends with the payload. Each local
    step: d = grad f(w) + lamb·(h_i - w_t), clipped to ``max_grad_norm``, then SGD with weight decay
    ``weight_decay + lamb``, so the step is grad f(w) + lamb·(w - w_t + h_i) + weight_decay·w (the
    paper's objective with alpha = lamb). The local lr decays by ``lr_decay`` per round. The client
    uploads w - w_t; the server sets h_i += w_i - w_t for every aggregated client and
    w_{t+1} = w_t + combine(w_i - w_t) + mean over ALL clients of h_i (the paper's theta = mean(theta_i) - h/alpha).
    The combine defaults to the uniform mean (the paper's and the reference's); a robust aggregator may replace it.

    Ablations (FedSpeed's pitfalls, DESIGN): ``server_correction=false`` drops the server's +mean(h);
    ``correction_sign=-1`` flips the sign of the local correction lamb·(h_i - w_t).
    """

    persistent = ("corrections",)

    def __init__(
        self,
        num_clients: int,
        lamb: float = 0.1,
        weight_decay: float = 1e-3,
        max_grad_norm: float = 10.0,
        lr_decay: float = 0.998,
        server_correction: bool = True,
        correction_sign: int = 1,
    ) -> None:
        check_range("strategy.num_clients", num_clients, low=1, integer=True)
        check_range("strategy.lamb", lamb, low=0)
        check_range("strategy.weight_decay", weight_decay, low=0)
        check_range("strategy.max_grad_norm", max_grad_norm, low=0, low_open=True)
        check_range("strategy.lr_decay", lr_decay, 0, 1, low_open=True)
        check_that("strategy.server_correction", server_correction, isinstance(server_correction, bool), "true or false")
        check_choice("strategy.correction_sign", correction_sign, (1, -1))
        self.num_clients, self.lamb = num_clients, lamb
        self.weight_decay, self.max_grad_norm, self.lr_decay = weight_decay, max_grad_norm, lr_decay
        self.server_correction, self.correction_sign = server_correction, correction_sign
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

    def gradient(self) -> GradientFn | None:
        """The local gradient estimator (None: plain autograd); FedSpeed's is sharpness-aware."""
        return None

    def training_for(self, task: LocalTask) -> LocalTraining:
        params = task.trainable()
        weight = self.correction_sign * self.lamb
        correction = GradOffset({n: weight * (task.extra.get(n, torch.zeros_like(p)) - task.global_state[n]) for n, p in params.items()})
        return task.training(
            lr=task.lr * self.lr_decay ** (task.round - 1),
            optimizer=task.optimizer.replace(weight_decay=self.weight_decay + self.lamb, grad_clip=self.max_grad_norm),
            gradient=self.gradient(),
            grad_hooks=(correction,),
        )

    # Server side.

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        for u in updates:
            h = self.corrections.setdefault(u.client_id, {})
            for name in self.parameter_names:
                h[name] = h[name] + u.update[name] if name in h else u.update[name].clone()
        mean_delta = combine(updates)
        h_sum = self.correction_sum() if self.server_correction else {}
        return {name: w + mean_delta[name] + (h_sum[name] / self.num_clients if name in h_sum else 0.0) for name, w in global_state.items()}
