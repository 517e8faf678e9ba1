"""MoNNA: decentralized momentum SGD with nearest-neighbour averaging, simulated on the server/client engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from fedsim.network import Network
from fedsim.params import check_choice, check_range, check_that
from fedsim.state import ClientState, Tensors, stack_flat, unflatten
from fedsim.strategy import ClientUpdate, Combine, LocalResult, LocalTask, OneLoopStrategy, ScoredModel, model_holding
from fedsim.training import Batch, LocalTraining, TrainOutcome

MOMENTUM_KEY = "monna.momentum"
RECEPTIONS = ("reference", "complete")
RULES = ("nna", "trimmed_mean")


class MoNNA(OneLoopStrategy):
    """MoNNA (Farhadkhani et al., "Robust Collaborative Learning with Linear Gradient Overhead",
    ICML 2023; reference code LPD-EPFL/robust-collaborative-learning).

    Peer-to-peer on a complete graph, synchronous, one stochastic step per round. Every node
    keeps its own model theta_i and Polyak momentum m_i (in its client state):
    m_i = beta·m_i + (1-beta)·(g_i + weight_decay·theta_i); it broadcasts the half step
    theta_i - gamma_t·m_i, with gamma_t = lr / (1 + s/lr_decay_rounds), s the steps done rounded down
    to a multiple of ``lr_decay_every`` (the reference's step schedule; 1: smooth). Each node then
    takes the mean of the q - f received half-step models nearest (L2) to its own (NNA), q the
    number it received. ``reception=reference`` is the reference's network: an honest node receives
    itself, every Byzantine vector and n - 2f - 1 random other honest vectors (q = n - f, keeps
    n - 2f; :class:`fedsim.network.AdversarialDelivery`); ``reception=complete`` gives every node all n
    (keeps n - f). ``rule=trimmed_mean`` replaces NNA by the coordinate-wise mean of the received
    vectors without the f largest and f smallest (the reference's ``trmean`` D-SGD baseline).

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
        reception: str = "reference",
        rule: str = "nna",
        lr_decay_every: int = 50,
    ) -> None:
        check_range("strategy.lr_decay_every", lr_decay_every, low=1, integer=True)
        check_choice("strategy.reception", reception, RECEPTIONS)
        check_choice("strategy.rule", rule, RULES)
        check_that("strategy.clients_per_round", clients_per_round, clients_per_round == num_clients,
                   f"num_clients = {num_clients}: MoNNA needs every node every round")
        check_that("strategy.f", f, isinstance(f, int) and 0 <= f < num_clients / 2, f">= 0 and < num_clients/2 = {num_clients / 2}")
        check_range("strategy.beta", beta, 0, 1, high_open=True)
        check_range("strategy.weight_decay", weight_decay, low=0)
        check_range("strategy.lr_decay_rounds", lr_decay_rounds, low=0, low_open=True)
        self.f, self.beta, self.weight_decay, self.lr_decay_rounds = f, beta, weight_decay, lr_decay_rounds
        self.reception, self.rule, self.lr_decay_every = reception, rule, lr_decay_every
        self.network = Network()  # the engine binds the harness's delivery before round 1
        self.node_models: dict[int, Tensors] = {}  # server side: each node's current model

    def bind_network(self, network: Network) -> None:
        self.network = network

    def payload_for(self, client_id: int, global_state: Tensors) -> Tensors:
        return self.node_models.get(client_id, global_state)

    # Client side: one momentum step, upload the half-step model.

    def training_for(self, task: LocalTask) -> LocalTraining:
        momentum = task.client_state.get(MOMENTUM_KEY) or {}
        return task.training(
            lr=self.step_size(task.lr, task.round),
            optimizer=task.optimizer.replace(momentum=self.beta, dampening=self.beta, nesterov=False, weight_decay=self.weight_decay),
            state={f"momentum.{k}": v for k, v in momentum.items()},
        )

    def batches_for(self, task: LocalTask) -> list[Batch]:
        return [next(task.batches())]

    def finish(self, task: LocalTask, trained: TrainOutcome) -> LocalResult:
        task.client_state.put(MOMENTUM_KEY, {k.removeprefix("momentum."): v for k, v in trained.state.items()})
        return LocalResult({**task.global_state, **trained.params}, len(task.y), {"train_loss": trained.mean_loss})

    def step_size(self, lr: float, server_round: int) -> float:
        """lr / (1 + s / lr_decay_rounds), s the last multiple of ``lr_decay_every`` steps done: a step
        down every ``lr_decay_every`` rounds, as the reference (``--learning-rate-decay-delta``)."""
        done = ((server_round - 1) // self.lr_decay_every) * self.lr_decay_every
        return lr / (1 + done / self.lr_decay_rounds)

    # Server side: every node's nearest-neighbour average.

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        """Each node's new model from the half steps it receives: NNA (the mean of the q - f nearest
        its own, q received) or the trimmed mean. Returns the mean of all nodes' models. ``combine``
        is not used: the peer-to-peer rule is the aggregation."""
        flat, names, _ = stack_flat([{n: u.update[n] for n in global_state} for u in updates])
        ids = [u.client_id for u in updates]
        for row, update in enumerate(updates):
            heard = ids if self.reception == "complete" else self.network.received(server_round, update.client_id, ids)
            received = flat[[ids.index(c) for c in heard]]
            self.node_models[update.client_id] = unflatten(self.mix(flat[row], received), names, global_state)
        models = list(self.node_models.values())
        return {n: sum(m[n] for m in models) / len(models) for n in names}

    def mix(self, own: torch.Tensor, received: torch.Tensor) -> torch.Tensor:
        """One node's aggregate of the vectors it received (its own among them)."""
        q = len(received)
        if self.rule == "trimmed_mean":
            trim = min(self.f, (q - 1) // 2)
            ordered = received.sort(dim=0).values
            return ordered[trim : q - trim].mean(0)
        distances = torch.linalg.vector_norm(received - own, dim=1)
        return received[distances.topk(max(q - self.f, 1), largest=False).indices].mean(0)

    def scored_models(
        self, global_state: Tensors, new_model: Callable[[], nn.Module], client_states: Mapping[int, ClientState]
    ) -> dict[int | None, ScoredModel]:
        """Every node's own model (the harness scores the honest nodes' mean)."""
        return {c: ScoredModel(model_holding(state, new_model)) for c, state in self.node_models.items()}
