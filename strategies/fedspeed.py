"""FedSpeed: prox-corrected, perturbation-merged local steps; the server adds back the mean correction."""

from __future__ import annotations

import torch
from torch import nn

from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, LocalResult, LocalTask, Strategy, cross_entropy

CORRECTION_KEY = "fedspeed.correction"


class FedSpeed(Strategy):
    """FedSpeed (Sun et al., "FedSpeed: Larger Local Interval, Less Communication Round, and
    Higher Generalization Accuracy", ICLR 2023; reference code woodenchild95/FL-Simulator).

    Client i keeps a prox-correction h_i (zero at start, kept in its client state across
    rounds, also when not sampled, and in checkpoints). Each local step on a batch:
    g1 = grad f(w); w' = w + rho·g1/||g1||; g2 = grad f(w'); g = (1-alpha)·g1 + alpha·g2;
    d = g + weight_decay·w + lamb·(w - w_t) + lamb·h_i; clip ||d|| to ``max_grad_norm``;
    w -= lr·d, with lr decayed by ``lr_decay`` per round. Afterwards h_i += w - w_t and the
    client uploads w - w_t. The server mirrors the sum of h_i over ALL clients from the
    deltas it receives and sets w_{t+1} = mean_i(w_i) + mean over all clients of h_i.

    ``lamb`` is the prox weight (the paper's 1/lambda, the reference code's ``lamb``).
    """

    persistent = ("correction_sum",)

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
        checks = {
            "num_clients": (num_clients, num_clients >= 1, ">= 1"),
            "rho": (rho, rho >= 0, ">= 0"),
            "alpha": (alpha, 0 <= alpha <= 1, "in [0, 1]"),
            "lamb": (lamb, lamb >= 0, ">= 0"),
            "weight_decay": (weight_decay, weight_decay >= 0, ">= 0"),
            "max_grad_norm": (max_grad_norm, max_grad_norm > 0, "> 0"),
            "lr_decay": (lr_decay, 0 < lr_decay <= 1, "in (0, 1]"),
        }
        for name, (value, ok, rule) in checks.items():
            if not ok:
                raise ValueError(f"strategy.{name}={value}: must be {rule}")
        self.num_clients = num_clients
        self.rho, self.alpha, self.lamb = rho, alpha, lamb
        self.weight_decay, self.max_grad_norm, self.lr_decay = weight_decay, max_grad_norm, lr_decay
        self.correction_sum: Tensors = {}  # server side: sum over all clients of h_i

    def init_global(self, model: nn.Module) -> Tensors:
        self.correction_sum = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
        return super().init_global(model)

    # Client side.

    def local_update(self, task: LocalTask) -> LocalResult:
        params = dict(task.model.named_parameters())
        anchor = {name: task.global_state[name] for name in params}
        correction = task.client_state.get(CORRECTION_KEY) or {n: torch.zeros_like(p) for n, p in params.items()}
        lr = task.lr * self.lr_decay ** (task.round - 1)
        task.model.train()
        total, steps = 0.0, 0
        for x, y in task.batches():
            loss, grads = self.merged_gradient(task.model, list(params.values()), x, y)
            with torch.no_grad():
                direction = [
                    g + self.weight_decay * p + self.lamb * (p - anchor[n] + correction[n])
                    for (n, p), g in zip(params.items(), grads)
                ]
                norm = torch.sqrt(sum(d.pow(2).sum() for d in direction))
                scale = min(1.0, self.max_grad_norm / (float(norm) + 1e-6))
                for p, d in zip(params.values(), direction):
                    p.sub_(lr * scale * d)
            total += loss
            steps += 1
        delta = self.model_delta(task.model, task.global_state)
        task.client_state.put(CORRECTION_KEY, {n: correction[n] + delta[n] for n in params})
        return LocalResult(delta, len(task.y), {"train_loss": total / max(steps, 1)})

    def merged_gradient(
        self, model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[float, list[torch.Tensor]]:
        """The loss at w and (1-alpha)·grad f(w) + alpha·grad f(w + rho·g/||g||)."""
        loss = cross_entropy(model, x, y)
        plain = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum(g.pow(2).sum() for g in plain))
        ascent = [g * (self.rho / (float(norm) + 1e-7)) for g in plain]
        with torch.no_grad():
            for p, e in zip(params, ascent):
                p.add_(e)
        perturbed = torch.autograd.grad(cross_entropy(model, x, y), params)
        with torch.no_grad():
            for p, e in zip(params, ascent):
                p.sub_(e)
        merged = [(1 - self.alpha) * g1 + self.alpha * g2 for g1, g2 in zip(plain, perturbed)]
        return float(loss.detach()), merged

    # Server side.

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate]) -> Tensors:
        """Uniform mean of the local models plus the mean correction over all clients.

        The server mirrors h_i += w_i - w_t from the deltas it accepts (a client's own h_i
        is updated also when its upload is rejected; the mirror then misses that delta).
        """
        for name, h_sum in self.correction_sum.items():
            h_sum += sum(u.update[name] for u in updates)
        new_state = {}
        for name, w in global_state.items():
            mean_delta = sum(u.update[name] for u in updates) / len(updates)
            correction = self.correction_sum[name] / self.num_clients if name in self.correction_sum else 0.0
            new_state[name] = w + mean_delta + correction
        return new_state
