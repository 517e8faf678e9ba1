"""The strategy base class every fedsim aggregation strategy subclasses (docs/architecture.md).

A strategy owns both halves of an algorithm: the client's local update (trained through the
one loop of :mod:`fedsim.training`, to which it contributes loss terms, gradient estimators
and gradient hooks) and the server's aggregation (which combines the updates with the
``combine`` part it is handed: a weighted mean unless a robust aggregator is configured).
The engine never names a concrete strategy: they are chosen with ``strategy._target_``.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from fedsim.component import Component
from fedsim.network import Network
from fedsim.state import ClientState, Tensors
from fedsim.training import (
    Batch,
    GradHook,
    GradientFn,
    LocalTraining,
    LossFn,
    LossTerm,
    OptimizerConfig,
    TrainOutcome,
    autograd_gradient,
    model_loss,
    shuffled_batches,
)

Combine = Callable[[list["ClientUpdate"]], Tensors]


@dataclass(frozen=True)
class ReplayStage:
    """One stage of a client's local training, as an attacker replays it (differentiably) on candidate data.

    ``params``: the attack model's parameter names this stage trains (None: the uploaded ones);
    ``optimizer``, ``lr``, ``epochs``: how; ``clip_groups``: groups of names whose gradient norm is
    each clipped to ``clip_norm`` before the optimizer's own global ``grad_clip`` (HyperFL's per-group clip).
    """

    params: tuple[str, ...] | None
    optimizer: OptimizerConfig
    lr: float
    epochs: int
    clip_groups: tuple[tuple[str, ...], ...] = ()
    clip_norm: float | None = None


def model_holding(state: Tensors, new_model: Callable[[], nn.Module]) -> nn.Module:
    """A fresh model loaded with ``state`` (non-strict: a strategy may share a subset of its tensors)."""
    model = new_model()
    model.load_state_dict(state, strict=False)
    return model


@dataclass
class LocalTask:
    """What one client's local update works on, prepared by the engine."""

    round: int
    client_id: int
    model: nn.Module  # on the run's device, the payload already loaded
    global_state: Tensors  # the payload the server sent this client
    x: torch.Tensor
    y: torch.Tensor
    lr: float
    local_epochs: int
    batch_size: int
    generator: torch.Generator  # seeded from (seed, round, client id)
    client_state: ClientState
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    config: dict[str, float | int | str] = field(default_factory=dict)
    extra: Tensors = field(default_factory=dict)  # per-client tensors the server sent (e.g. FedSpeed's h_i)
    local_steps: int | None = None  # at most this many mini-batch steps per round (None: every batch of local_epochs)
    gradient: GradientFn | None = None  # a codec's own gradient estimator (zeroth-order SPSA), else autograd

    def batches(self, epochs: int | None = None) -> Iterator[Batch]:
        """Shuffled mini-batches over ``epochs`` epochs (default ``local_epochs``), drawn from ``generator``;
        at most ``local_steps`` of them when that is set (minibatch FedSGD: ``local_steps=1``)."""
        batches = shuffled_batches(self.x, self.y, self.batch_size, self.local_epochs if epochs is None else epochs, self.generator)
        return itertools.islice(batches, self.local_steps) if self.local_steps is not None and epochs is None else iter(batches)

    def trainable(self) -> Tensors:
        """The model's parameters that the payload carries and that require gradients."""
        return {n: p.detach() for n, p in self.model.named_parameters() if n in self.global_state and p.requires_grad}

    def training(
        self,
        loss_fn: LossFn | None = None,
        *,
        optimizer: OptimizerConfig | None = None,
        lr: float | None = None,
        gradient: GradientFn | None = None,
        loss_terms: tuple[LossTerm, ...] = (),
        grad_hooks: tuple[GradHook, ...] = (),
        state: Tensors | None = None,
    ) -> LocalTraining:
        """The loop configured for this task: the model's cross-entropy, the run's optimizer and lr,
        the codec's gradient estimator if it has one, plus the strategy's contributions."""
        return LocalTraining(
            loss_fn=loss_fn or model_loss(self.model),
            optimizer=optimizer or self.optimizer,
            lr=self.lr if lr is None else lr,
            gradient=gradient or self.gradient or autograd_gradient,
            loss_terms=loss_terms,
            grad_hooks=grad_hooks,
            state=dict(state or {}),
        )

    def delta(self, params: Tensors, *, spend: bool = False) -> Tensors:
        """``params`` minus the payload, for every payload tensor. A tensor ``params`` lacks is read from the
        model as it is now: its buffers (BatchNorm's running statistics, which training updates in place)
        move, a frozen parameter gives zero. ``spend``: ``params``' tensors are the caller's to overwrite, and
        a delta of their shape and dtype is computed in their memory (:meth:`TrainOutcome.spend_params`)."""
        if all(k in params for k in self.global_state):  # every payload tensor was trained: the model is not read
            return {k: params[k].sub_(v) if spend and params[k].shape == v.shape and params[k].dtype == v.dtype else params[k] - v
                    for k, v in self.global_state.items()}
        current = dict(self.model.state_dict())
        return {k: (params[k] if k in params else current[k].detach()) - v if k in params or k in current else torch.zeros_like(v)
                for k, v in self.global_state.items()}


@dataclass
class LocalResult:
    """What a client's local update produced: the update to upload and its metrics."""

    update: Tensors
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ClientUpdate:
    """A decoded, validated client update as the server sees it."""

    client_id: int
    update: Tensors
    num_examples: float  # the aggregation weight: the example count, lowered where max_weight_share caps it
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ScoredModel:
    """A model the scoring harness evaluates: the global one, or one client's own (personalised)."""

    model: nn.Module
    label_counts: torch.Tensor | None = None  # re-weight the test set to this label distribution


def weighted_mean(updates: list[ClientUpdate]) -> Tensors:
    """Mean of the updates weighted by their number of examples (FedAvg's combine)."""
    total = float(sum(u.num_examples for u in updates))
    return weighted_sum(updates, [u.num_examples / total for u in updates])


def uniform_mean(updates: list[ClientUpdate]) -> Tensors:
    """Unweighted mean of the updates."""
    return {k: total / len(updates) for k, total in weighted_sum(updates, [1.0] * len(updates)).items()}


def weighted_sum(updates: list[ClientUpdate], weights: list[float]) -> Tensors:
    """The sum of ``weight · update`` per tensor, accumulated in place: one pass over each update and no
    temporaries (a hundred clients' products each allocated anew cost twice the arithmetic)."""
    out = {}
    for k, first in updates[0].update.items():
        total = first * weights[0]
        for u, w in zip(updates[1:], weights[1:]):
            total.add_(u.update[k], alpha=w)
        out[k] = total
    return out


class Strategy(Component, ABC):
    """Base of every fedsim strategy.

    Subclasses implement :meth:`local_update` (client side) and :meth:`aggregate` (server side).
    ``robust_combine_ok``: whether the strategy stays correct when a robust aggregator replaces
    its combine (a strategy that is itself a robust rule, such as MoNNA, refuses one at config time).
    """

    robust_combine_ok: ClassVar[bool] = True

    def init_global(self, model: nn.Module) -> Tensors:
        """The initial global state: the floating-point tensors of ``model``."""
        return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def configure_round(self, server_round: int) -> dict[str, float | int | str]:
        """Extra config sent to every sampled client this round.

        This, :meth:`payload_for` and :meth:`extra_for` build round r's messages right after round r-1's
        :meth:`aggregate`, before round r-1's evaluation and checkpoint (docs/architecture.md, "One round"):
        they must not change ``persistent`` state or what :meth:`scored_models` reads."""
        return {}

    def payload_for(self, client_id: int, global_state: Tensors) -> Tensors:
        """The model arrays sent to ``client_id`` this round: the global state, unless each client keeps its own."""
        return global_state

    def extra_for(self, client_id: int) -> Tensors:
        """Per-client tensors sent with the payload (counted in ``bytes_down``); none by default."""
        return {}

    def combine(self, updates: list[ClientUpdate]) -> Tensors:
        """The strategy's own combine, used unless a robust aggregator is configured: the weighted mean."""
        return weighted_mean(updates)

    def scored_models(
        self, global_state: Tensors, new_model: Callable[[], nn.Module], client_states: Mapping[int, ClientState]
    ) -> dict[int | None, ScoredModel]:
        """The models the harness evaluates after a round: ``{None: the global model}`` by default.

        Strategies whose clients keep their own models (personalised or decentralised) return one
        per client id; the harness then reports the mean over the truly honest clients.
        ``client_states`` is every client's state as the simulator hosts it (scoring only).
        """
        return {None: ScoredModel(model_holding(global_state, new_model))}

    def attack_model(self, global_state: Tensors, new_model: Callable[[], nn.Module]) -> nn.Module:
        """The public model an honest-but-curious server differentiates to invert a client's upload.

        Its named parameters carry the names of the uploaded tensors, and its forward maps
        inputs to logits. Default: the configured model holding the global state.
        """
        return model_holding(global_state, new_model)

    def replay_stages(self, attack_model: nn.Module, optimizer: OptimizerConfig, lr: float, local_epochs: int) -> list[ReplayStage]:
        """How a client of this strategy trains locally, in the names of ``attack_model``, for attackers that
        simulate the upload (Inverting Gradients, GIFD). Default: the uploaded parameters, the run's optimizer."""
        return [ReplayStage(None, optimizer, lr, local_epochs)]

    def bind_network(self, network: Network) -> None:
        """Server side, before round 1: the simulated network a peer-to-peer strategy's messages travel
        (who receives whom; built by the engine from the harness's attack assignment). Ignored by default."""

    def upload_shapes(self, global_state: Tensors) -> dict[str, tuple[int, ...]]:
        """The arrays (names and shapes) a valid client upload must hold."""
        return {k: tuple(v.shape) for k, v in global_state.items()}

    def upload_dtypes(self, global_state: Tensors) -> dict[str, torch.dtype]:
        """The dtype each uploaded array must have: the global tensor's of the same name (floating point
        for a name the global state lacks)."""
        return {k: global_state[k].dtype for k in self.upload_shapes(global_state) if k in global_state}

    @abstractmethod
    def local_update(self, task: LocalTask) -> LocalResult:
        """Train on the client's data; return the update to upload."""

    @property
    def vectorizable(self) -> bool:
        """Whether a vectorised cohort (backend.vectorize) may run this strategy's clients as one vmap: only a
        :class:`OneLoopStrategy` that keeps its one-loop local update."""
        return False

    @abstractmethod
    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        """The next global state from the accepted, screened updates; ``combine(updates)`` is the
        configured aggregation rule (weighted mean, or a robust aggregator)."""

    # Shared building block for subclasses.

    @staticmethod
    def fit(task: LocalTask, **contributions: object) -> TrainOutcome:
        """Run the one training loop over the task's trainable parameters and mini-batches;
        ``contributions`` are :meth:`LocalTask.training`'s keyword arguments."""
        return task.training(**contributions).run(task.trainable(), task.batches())  # type: ignore[arg-type]


class OneLoopStrategy(Strategy):
    """A strategy whose local update is one run of the training loop (:meth:`training_for` over
    :meth:`batches_for`), then :meth:`finish` of its outcome, so that a vectorised cohort can run many
    clients' updates as one vmap (``backend.vectorize``). A subclass that overrides :meth:`local_update`
    leaves the protocol, and its clients run one by one. The default upload is the model delta."""

    def local_update(self, task: LocalTask) -> LocalResult:
        return self.finish(task, self.training_for(task).run(task.trainable(), self.batches_for(task)))

    @property
    def vectorizable(self) -> bool:
        return type(self).local_update is OneLoopStrategy.local_update

    @abstractmethod
    def training_for(self, task: LocalTask) -> LocalTraining:
        """The training loop for ``task``, with this strategy's contributions."""

    def batches_for(self, task: LocalTask) -> Iterable[Batch]:
        """The mini-batches the loop trains on: the task's."""
        return task.batches()

    def finish(self, task: LocalTask, trained: TrainOutcome) -> LocalResult:
        """The upload (and any client-state change) from the trained outcome: the delta, the example count,
        the mean training loss."""
        params, spend = trained.spend_params()
        return LocalResult(task.delta(params, spend=spend), len(task.y), {"train_loss": trained.mean_loss})
