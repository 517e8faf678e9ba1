"""MoNNA: decentralized momentum SGD with nearest-neighbour averaging, simulated on the server/client engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from fedsim.state import ClientState, Tensors
from fedsim.strategy import ClientUpdate, LocalResult, LocalTask, Strategy, cross_entropy

MOMENTUM_KEY = "monna.momentum"


class MoNNA(Strategy):
    """MoNNA (Farhadkhani et al., "Robust Collaborative Learning with Linear Gradient Overhead",
    ICML 2023; reference code LPD-EPFL/robust-collaborative-learning).

    Peer-to-peer on a complete graph, synchronous, one stochastic step per round. Every node
    keeps its own model theta_i and Polyak momentum m_i (in its client state):
    m_i = beta·m_i + (1-beta)·(g_i + weight_decay·theta_i); it broadcasts the half step
    theta_i - gamma_t·m_i, with gamma_t = lr / (1 + (t-1)/lr_decay_rounds). Each node then
    takes the mean of the n - f received half-step models nearest (L2) to its own (NNA).

    On the engine the server is only the broadcast medium: it receives every node's half
    step, computes every node's NNA mix and sends each node its own new model
    (:meth:`payload_for`). ``f=0`` is plain averaging (D-SGD with momentum). The reported
    ``test_acc``/``test_loss`` are the honest nodes' means.
    """

    persistent = ("node_models",)

    def __init__(
        self,
        num_clients: int,
        clients_per_round: int,
        f: int,
        beta: float = 0.99,
        weight_decay: float = 1e-4,
        lr_decay_rounds: float = 50.0,
    ) -> None:
        if clients_per_round != num_clients:
            raise ValueError(
                f"strategy.clients_per_round={clients_per_round}: MoNNA needs every node every round "
                f"(clients_per_round = num_clients = {num_clients})"
            )
        if not 0 <= f < num_clients / 2:
            raise ValueError(f"strategy.f={f}: must be >= 0 and < num_clients/2 = {num_clients / 2}")
        if not 0 <= beta < 1:
            raise ValueError(f"strategy.beta={beta}: must be in [0, 1)")
        if weight_decay < 0:
            raise ValueError(f"strategy.weight_decay={weight_decay}: must be >= 0")
        if lr_decay_rounds <= 0:
            raise ValueError(f"strategy.lr_decay_rounds={lr_decay_rounds}: must be > 0")
        self.f, self.beta, self.weight_decay, self.lr_decay_rounds = f, beta, weight_decay, lr_decay_rounds
        self.node_models: dict[int, Tensors] = {}  # server side: each node's current model

    def payload_for(self, client_id: int, global_state: Tensors) -> Tensors:
        return self.node_models.get(client_id, global_state)

    # Client side: one momentum step, upload the half-step model.

    def local_update(self, task: LocalTask) -> LocalResult:
        params = dict(task.model.named_parameters())
        x, y = next(task.batches())
        task.model.train()
        loss = cross_entropy(task.model, x, y)
        grads = torch.autograd.grad(loss, list(params.values()))
        momentum = task.client_state.get(MOMENTUM_KEY) or {n: torch.zeros_like(p) for n, p in params.items()}
        gamma = task.lr / (1 + (task.round - 1) / self.lr_decay_rounds)
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads):
                momentum[name] = self.beta * momentum[name] + (1 - self.beta) * (g + self.weight_decay * p)
        task.client_state.put(MOMENTUM_KEY, momentum)
        half_step = {k: v - gamma * momentum[k] if k in momentum else v for k, v in task.global_state.items()}
        return LocalResult(half_step, len(task.y), {"train_loss": float(loss.detach())})

    # Server side: every node's nearest-neighbour average.

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate]) -> Tensors:
        """Each node's new model is the mean of the q - f received half steps nearest its own
        (q received; its own is the pivot). Returns the mean of all nodes' models."""
        names = list(global_state)
        flat = torch.stack([torch.cat([u.update[n].flatten() for n in names]) for u in updates])
        keep = max(len(updates) - self.f, 1)
        distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = distances.topk(keep, dim=1, largest=False).indices
        for row, update in enumerate(updates):
            self.node_models[update.client_id] = unflatten(flat[nearest[row]].mean(0), global_state)
        models = list(self.node_models.values())
        return {n: sum(m[n] for m in models) / len(models) for n in names}

    def evaluate(
        self,
        global_state: Tensors,
        new_model: Callable[[], nn.Module],
        x: torch.Tensor,
        y: torch.Tensor,
        honest_clients: list[int],
        client_states: Mapping[int, ClientState] | None = None,
    ) -> dict[str, float]:
        """The honest nodes' mean test accuracy and loss (each node evaluated on its own model)."""
        model = new_model()  # one module, loaded with each node's state in turn
        scores = [
            super(MoNNA, self).evaluate(self.node_models.get(c, global_state), lambda: model, x, y, honest_clients)
            for c in honest_clients
        ]
        return {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}


def unflatten(vector: torch.Tensor, like: Tensors) -> Tensors:
    """Split a flat vector back into tensors shaped like ``like`` (in its key order)."""
    out, start = {}, 0
    for name, ref in like.items():
        out[name] = vector[start : start + ref.numel()].view_as(ref).clone()
        start += ref.numel()
    return out
