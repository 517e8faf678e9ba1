"""MoNNA: decentralized momentum SGD with nearest-neighbour averaging, simulated on the server/client engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from fedsim.params import check_range, check_that
from fedsim.state import ClientState, Tensors, stack_flat, unflatten
from fedsim.strategy import ClientUpdate, Combine, LocalResult, LocalTask, ScoredModel, Strategy, model_holding

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
    (:meth:`payload_for`). ``f=0`` is plain averaging (D-SGD with momentum). The harness
    reports the honest nodes' mean ``test_acc``/``test_loss``. The local step is the one
    training loop's SGD with momentum ``beta`` and dampening ``beta`` (buffers from zero, kept
    in the client state) and weight decay ``weight_decay``. MoNNA is a robust rule itself: a
    robust server-side combine is refused at config time.
    """

    persistent = ("node_models",)
    robust_combine_ok = False

    def __init__(
        self,
        num_clients: int,
        clients_per_round: int,
        f: int,
        beta: float = 0.99,
        weight_decay: float = 1e-4,
        lr_decay_rounds: float = 50.0,
    ) -> None:
        check_that("strategy.clients_per_round", clients_per_round, clients_per_round == num_clients,
                   f"num_clients = {num_clients}: MoNNA needs every node every round")
        check_that("strategy.f", f, isinstance(f, int) and 0 <= f < num_clients / 2, f">= 0 and < num_clients/2 = {num_clients / 2}")
        check_range("strategy.beta", beta, 0, 1, high_open=True)
        check_range("strategy.weight_decay", weight_decay, low=0)
        check_range("strategy.lr_decay_rounds", lr_decay_rounds, low=0, low_open=True)
        self.f, self.beta, self.weight_decay, self.lr_decay_rounds = f, beta, weight_decay, lr_decay_rounds
        self.node_models: dict[int, Tensors] = {}  # server side: each node's current model

    def payload_for(self, client_id: int, global_state: Tensors) -> Tensors:
        return self.node_models.get(client_id, global_state)

    # Client side: one momentum step, upload the half-step model.

    def local_update(self, task: LocalTask) -> LocalResult:
        momentum = task.client_state.get(MOMENTUM_KEY) or {}
        trained = task.training(
            lr=task.lr / (1 + (task.round - 1) / self.lr_decay_rounds),
            optimizer=task.optimizer.replace(momentum=self.beta, dampening=self.beta, nesterov=False, weight_decay=self.weight_decay),
            state={f"momentum.{k}": v for k, v in momentum.items()},
        ).run(task.trainable(), [next(task.batches())])
        task.client_state.put(MOMENTUM_KEY, {k.removeprefix("momentum."): v for k, v in trained.state.items()})
        return LocalResult({**task.global_state, **trained.params}, len(task.y), {"train_loss": trained.mean_loss})

    # Server side: every node's nearest-neighbour average.

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        """Each node's new model is the mean of the q - f received half steps nearest its own
        (q received; its own is the pivot). Returns the mean of all nodes' models. ``combine`` is
        not used: nearest-neighbour averaging is the aggregation rule."""
        flat, names, _ = stack_flat([{n: u.update[n] for n in global_state} for u in updates])
        keep = max(len(updates) - self.f, 1)
        distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
        nearest = distances.topk(keep, dim=1, largest=False).indices
        for row, update in enumerate(updates):
            self.node_models[update.client_id] = unflatten(flat[nearest[row]].mean(0), names, global_state)
        models = list(self.node_models.values())
        return {n: sum(m[n] for m in models) / len(models) for n in names}

    def scored_models(
        self, global_state: Tensors, new_model: Callable[[], nn.Module], client_states: Mapping[int, ClientState]
    ) -> dict[int | None, ScoredModel]:
        """Every node's own model (the harness scores the honest nodes' mean)."""
        return {c: ScoredModel(model_holding(state, new_model)) for c, state in self.node_models.items()}
