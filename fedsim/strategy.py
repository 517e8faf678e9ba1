"""The strategy base class every fedsim aggregation strategy subclasses.

A strategy owns both halves of an algorithm: the client's local update and the
server's aggregation. The engine moves the data between them (Flower messages),
runs the attack/codec/validation/defense pipeline, and never names a concrete
strategy: they are chosen with ``strategy._target_``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fedsim.evaluation import evaluate as evaluate_model
from fedsim.persistent import Persistent
from fedsim.state import ClientState, Tensors


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default training loss."""
    return nn.functional.cross_entropy(model(x), y)


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
    model: nn.Module  # on ``device``, the global state already loaded
    global_state: Tensors
    x: torch.Tensor
    y: torch.Tensor
    lr: float
    local_epochs: int
    batch_size: int
    generator: torch.Generator  # seeded from (seed, round, client id)
    client_state: ClientState
    config: dict[str, float | int | str] = field(default_factory=dict)

    def batches(self, epochs: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled mini-batches over ``epochs`` epochs (default ``local_epochs``), drawn from ``generator``."""
        n = len(self.y)
        for _ in range(self.local_epochs if epochs is None else epochs):
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield self.x[idx], self.y[idx]


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
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)


class Strategy(Persistent, ABC):
    """Base of every fedsim strategy.

    Subclasses implement :meth:`local_update` (client side) and :meth:`aggregate`
    (server side); the defaults of the other hooks share the whole model and
    exchange updates shaped like the global state.
    """

    def init_global(self, model: nn.Module) -> Tensors:
        """The initial global state: the floating-point tensors of ``model``."""
        return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def configure_round(self, server_round: int) -> dict[str, float | int | str]:
        """Extra config sent to every sampled client this round."""
        return {}

    def payload_for(self, client_id: int, global_state: Tensors) -> Tensors:
        """The arrays sent to ``client_id`` this round: the global state, unless each client keeps its own model."""
        return global_state

    def evaluate(
        self,
        global_state: Tensors,
        new_model: Callable[[], nn.Module],
        x: torch.Tensor,
        y: torch.Tensor,
        honest_clients: list[int],
        client_states: Mapping[int, ClientState] | None = None,
    ) -> dict[str, float]:
        """Central evaluation after aggregation: the global model's ``test_acc`` and ``test_loss``.

        ``honest_clients`` (the truly benign client ids, for scoring only) serves strategies
        whose clients keep their own models and report their honest clients' mean;
        ``client_states`` (every client's persistent state, as the simulator holds it)
        serves strategies whose clients keep private layers (personalised evaluation).
        """
        return evaluate_model(model_holding(global_state, new_model), x, y)

    def attack_model(self, global_state: Tensors, new_model: Callable[[], nn.Module]) -> nn.Module:
        """The public model an honest-but-curious server differentiates to invert a client's upload.

        Its named parameters carry the names of the uploaded tensors, and its forward maps
        images to logits. Default: the configured model holding the global state. Strategies
        whose uploads are not model parameters (e.g. a hypernetwork generating them) return
        what the server can build from public knowledge alone.
        """
        return model_holding(global_state, new_model)

    def upload_shapes(self, global_state: Tensors) -> dict[str, tuple[int, ...]]:
        """The arrays (names and shapes) a valid client upload must hold."""
        return {k: tuple(v.shape) for k, v in global_state.items()}

    @abstractmethod
    def local_update(self, task: LocalTask) -> LocalResult:
        """Train on the client's data; return the update to upload."""

    @abstractmethod
    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate]) -> Tensors:
        """Combine the accepted client updates into the next global state."""

    # Shared building blocks for subclasses.

    @staticmethod
    def sgd_epochs(task: LocalTask, loss_fn: LossFn | None = None) -> float:
        """Plain mini-batch SGD over ``task``; returns the mean training loss.

        ``loss_fn(model, x, y)`` defaults to cross-entropy; subclasses add their
        regularisers through it.
        """
        loss_fn = loss_fn or cross_entropy
        params = [p for p in task.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=task.lr)
        task.model.train()
        total, steps = 0.0, 0
        for x, y in task.batches():
            optimizer.zero_grad()
            loss = loss_fn(task.model, x, y)
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        return total / max(steps, 1)

    @staticmethod
    def model_delta(model: nn.Module, global_state: Tensors) -> Tensors:
        """Local model minus global state, for the shared tensors."""
        local = model.state_dict()
        return {k: (local[k].detach() - v).clone() for k, v in global_state.items()}

    @staticmethod
    def weighted_mean(updates: list[ClientUpdate]) -> Tensors:
        """Mean of the updates weighted by their number of examples."""
        total = float(sum(u.num_examples for u in updates))
        keys = updates[0].update.keys()
        return {k: sum(u.update[k] * (u.num_examples / total) for u in updates) for k in keys}
