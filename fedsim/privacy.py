"""The privacy-observer part: an honest-but-curious server looking at what it receives.

An observer gets a :class:`ServerView`, exactly what such a server holds: the global state it
sent, the decoded uploads, the public training hyper-parameters and a builder of the public
model; never the clients' data. It returns :class:`Reconstruction` s; the scoring harness
(which alone holds the true batches) scores them and draws the comparison grids. Observers
never change training. The base class is the ``privacy_attack=none`` component.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedsim.component import Component
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, ReplayStage


@dataclass(frozen=True)
class DataFacts:
    """Public facts about the task's inputs: shape, classes and the normalisation the model expects."""

    input_shape: tuple[int, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        """Normalised inputs -> pixels in [0, 1]."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return np.clip(np.asarray(x, dtype=np.float32) * std + mean, 0.0, 1.0)


@dataclass
class ServerView:
    """What an honest-but-curious server knows in one round."""

    round: int
    seed: int
    global_state: Tensors
    updates: list[ClientUpdate]  # decoded uploads; ``num_examples`` as the client claimed (capped by the engine)
    lr: float
    local_epochs: int
    batch_size: int
    data: DataFacts
    attack_model: Callable[[], nn.Module]  # the public model the uploads are gradients of
    held_out: np.ndarray  # the server's own test inputs (normalised): auxiliary data it may use
    # The true labels of a client's batch, granted by the harness to observers run in the papers'
    # label-known threat model (``privacy_attack.labels=known``); not something a server has.
    granted_labels: Callable[[int], torch.Tensor]
    # How the clients trained (the strategy's local schedule in the attack model's names), for attacks that
    # simulate the upload; empty: plain SGD at ``lr`` for ``local_epochs``.
    replay: Callable[[nn.Module], list[ReplayStage]] = lambda model: []
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class Reconstruction:
    """An observer's guess of one client's batch: normalised inputs and labels."""

    client_id: int
    images: torch.Tensor
    labels: torch.Tensor


@dataclass
class Observation:
    """An observer's output for one round: reconstructions to score, and notes per client (e.g. why skipped)."""

    reconstructions: list[Reconstruction] = field(default_factory=list)
    notes: dict[int, dict[str, Any]] = field(default_factory=dict)


class PrivacyAttack(Component):
    """No privacy attack: the server observes nothing."""

    def observe(self, view: ServerView) -> Observation | None:
        """Inspect this round's uploads; None when this observer does not act this round."""
        return None
