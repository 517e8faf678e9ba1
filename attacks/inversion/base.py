"""The base of gradient-inversion privacy attacks (DLG, iDLG, Inverting Gradients, GIFD).

An honest-but-curious server holds the public model (the global state it sent), the
decoded update of a client, and the training hyper-parameters (learning rate, local
epochs, batch size, number of examples). :class:`InversionTarget` packages exactly
that and offers what every attack is built from: the gradient or the simulated
local update of candidate images, the matching distances, total variation, and the
iDLG label rule. :class:`GradientInversion` is the observer: it picks the targeted
clients and rounds and asks the concrete attack for a reconstruction from the server's
public view; the engine's scoring harness (which alone holds the true batches) scores it
and draws the PNG grid.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from fedsim.component import RunFacts
from fedsim.params import check_choice, check_range, check_that
from fedsim.privacy import DataFacts, Observation, PrivacyAttack, Reconstruction, ServerView
from fedsim.seeding import torch_generator
from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, ReplayStage
from fedsim.training import Optimizer, OptimizerConfig, global_norm

log = logging.getLogger("fedsim")

LABEL_SOURCES = ("infer", "known")


class NotApplicable(ValueError):
    """The attack cannot act on this upload (the observer notes why and skips the client)."""


class LabelInferenceError(NotApplicable):
    """The update carries no classifier-layer gradient to read the labels from (iDLG's rule)."""


@dataclass
class InversionTarget:
    """What the server knows about one client's update, and the differentiable tools to invert it."""

    model: nn.Module  # the public model: the global state the client started from
    update: Tensors  # the decoded update, restricted to the model's parameters
    lr: float
    local_epochs: int
    batch_size: int
    num_images: int
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W)
    mean: torch.Tensor  # (C, 1, 1) normalisation of the model's inputs
    std: torch.Tensor
    generator: torch.Generator  # the attack's own randomness
    stages: tuple[ReplayStage, ...] = ()  # how the client trained (empty: plain SGD at lr for local_epochs)

    @classmethod
    def from_update(
        cls,
        model: nn.Module,
        update: Tensors,
        data: DataFacts,
        lr: float,
        local_epochs: int,
        batch_size: int,
        num_images: int,
        generator: torch.Generator,
        stages: Sequence[ReplayStage] = (),
    ) -> "InversionTarget":
        device = next(model.parameters()).device
        names = {name for name, _ in model.named_parameters()}
        stats = [torch.tensor(v, dtype=torch.float32, device=device)[:, None, None] for v in (data.mean, data.std)]
        return cls(
            model=model.eval(),
            update={k: v.detach().to(device) for k, v in update.items() if k in names},
            lr=lr,
            local_epochs=local_epochs,
            batch_size=batch_size,
            num_images=num_images,
            num_classes=data.num_classes,
            image_shape=data.input_shape,
            mean=stats[0],
            std=stats[1],
            generator=generator,
            stages=tuple(stages) or (ReplayStage(None, OptimizerConfig(), lr, local_epochs),),
        )

    @property
    def local_steps(self) -> int:
        """SGD steps the client took this round."""
        return self.local_epochs * math.ceil(self.num_images / self.batch_size)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised model inputs -> pixel units."""
        return x * self.std + self.mean

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel units -> normalised model inputs."""
        return (pixels - self.mean) / self.std

    def clamp_to_pixel_box(self, x: torch.Tensor) -> None:
        """In place: keep normalised images inside the valid pixel range [0, 1]."""
        x.copy_(self.from_pixels(self.to_pixels(x).clamp(0.0, 1.0)))

    def random_images(self, *shape: int) -> torch.Tensor:
        """Standard-normal candidate images (normalised units), ``num_images`` of them unless ``shape`` is given."""
        size = shape or (self.num_images, *self.image_shape)
        return torch.randn(size, generator=self.generator, device=self.generator.device).to(self.mean.device)

    def observed_gradient(self) -> Tensors:
        """The gradient the update stands for: exact for one SGD step (FedSGD), the mean step otherwise."""
        return {k: -v / (self.lr * self.local_steps) for k, v in self.update.items()}

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> Tensors:
        """Cross-entropy gradient of the public model at ``(x, y)``, differentiable in ``x`` and ``y``.

        ``y`` holds class indices or (soft) class probabilities.
        """
        return self._grad(self._parameters(), x, y, {})

    def simulate_update(self, x: torch.Tensor, y: torch.Tensor) -> Tensors:
        """The update the client's local training on ``(x, y)`` would upload (unrolled, differentiable).

        Each replay stage trains its parameters with its optimizer (momentum, weight decay, clipping as
        the client's); the other parameters keep their current values, so a stage sees what earlier
        stages trained (HyperFL's head stage). The client's shuffling is unknown to the server:
        mini-batches follow the order of ``x``.
        """
        params = {k: p.detach() for k, p in self.model.named_parameters()}
        start = {k: params[k] for k in self.update}
        for stage in self.stages:
            names = list(self.update) if stage.params is None else list(stage.params)
            optimizer, state = Optimizer(stage.optimizer), {}
            for _ in range(stage.epochs):
                for first in range(0, len(x), self.batch_size):
                    batch = slice(first, first + self.batch_size)
                    trained = {k: params[k] for k in names}
                    grads = clip_replayed(stage, self._grad(trained, x[batch], y[batch], params))
                    trained, state = optimizer.step(trained, grads, state, stage.lr)
                    params.update(trained)
        return {k: params[k] - start[k] for k in start}

    def matching_objective(self, x: torch.Tensor, y: torch.Tensor, tv_weight: float) -> torch.Tensor:
        """Inverting Gradients' objective: cosine distance of the simulated to the observed update
        plus ``tv_weight`` x total variation of the images in pixel units."""
        return cosine_distance(self.simulate_update(x, y), self.update) + tv_weight * total_variation(self.to_pixels(x))

    def infer_labels(self) -> torch.Tensor:
        """Labels from the last layer's weight gradient (iDLG, Zhao et al. 2020).

        With cross-entropy and non-negative penultimate activations the weight-gradient
        row of a sample's true class sums negative, every other row positive. One image:
        the most negative row. Several: the classes with negative rows, most negative
        first, repeated in that order when the batch holds more images than such classes.
        """
        rows = self._last_layer_gradient().sum(dim=1)
        ranked = torch.argsort(rows)
        negative = ranked[: max(int((rows < 0).sum()), 1)]
        return negative.repeat(math.ceil(self.num_images / len(negative)))[: self.num_images].clone()

    def _last_layer_gradient(self) -> torch.Tensor:
        for name, p in reversed(list(self.model.named_parameters())):
            if p.dim() == 2 and p.shape[0] == self.num_classes and name in self.update:
                return self.observed_gradient()[name]
        raise LabelInferenceError("the update holds no last-layer weight (num_classes x features): cannot infer labels")

    def _parameters(self) -> Tensors:
        return {k: p.detach() for k, p in self.model.named_parameters() if k in self.update}

    def _grad(self, params: Tensors, x: torch.Tensor, y: torch.Tensor, others: Tensors) -> Tensors:
        """Gradient in ``params``; the model's other parameters from ``others`` (else as the model holds them)."""
        params = {k: p if p.requires_grad else p.requires_grad_() for k, p in params.items()}
        rest = {k: others.get(k, p.detach()) for k, p in self.model.named_parameters() if k not in params}
        logits = functional_call(self.model, {**rest, **params}, (x,))
        loss = nn.functional.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        return dict(zip(params, grads))


def clip_replayed(stage: ReplayStage, grads: Tensors) -> Tensors:
    """A replay stage's clipping, differentiably: each group to ``clip_norm``, then the optimizer's global ``grad_clip``."""

    def clip(group: Tensors, max_norm: float) -> Tensors:
        scale = (max_norm / (global_norm(group.values()) + 1e-6)).clamp(max=1.0)
        return {k: g * scale for k, g in group.items()}

    for names in stage.clip_groups if stage.clip_norm is not None else ():
        grads = {**grads, **clip({k: grads[k] for k in names if k in grads}, stage.clip_norm)}
    return grads if stage.optimizer.grad_clip is None else clip(grads, stage.optimizer.grad_clip)


def euclidean_distance(a: Tensors, b: Tensors) -> torch.Tensor:
    """Squared L2 distance summed over all tensors (DLG's matching loss)."""
    return sum(((a[k] - b[k]) ** 2).sum() for k in b)


def cosine_distance(a: Tensors, b: Tensors) -> torch.Tensor:
    """1 - cosine similarity of the concatenation of all tensors (Inverting Gradients' matching loss)."""
    dot = sum((a[k] * b[k]).sum() for k in b)
    norm_a = torch.sqrt(sum(a[k].pow(2).sum() for k in b))
    norm_b = torch.sqrt(sum(b[k].pow(2).sum() for k in b))
    return 1.0 - dot / (norm_a * norm_b + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, for any number of channels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


class GradientInversion(PrivacyAttack):
    """Base observer of the gradient-inversion attacks: targeting, scoring and the PNG grid.

    ``rounds`` / ``clients``: which rounds and client ids to attack (null: all);
    ``max_images``: clients holding more examples are skipped (the cost grows with the
    batch); ``labels``: ``infer`` (iDLG rule, the realistic server) or ``known``
    (the labels are handed to the attacker, as in the papers' label-known settings).
    """

    def __init__(
        self,
        rounds: Sequence[int] | None = (1,),
        clients: Sequence[int] | None = None,
        max_images: int = 8,
        labels: str = "infer",
    ) -> None:
        check_range("privacy_attack.max_images", max_images, low=1, integer=True)
        check_choice("privacy_attack.labels", labels, LABEL_SOURCES)
        self.rounds = None if rounds is None else set(rounds)
        self.clients = None if clients is None else set(clients)
        self.max_images = max_images
        self.labels = labels

    def check_run(self, run: RunFacts) -> None:
        """Refuse a run in which every attacked client holds more than ``max_images`` examples; warn when some do."""
        chosen = [cid for cid in range(run.num_clients) if self.clients is None or cid in self.clients]
        sizes = [run.partition_sizes[cid] for cid in chosen if cid < run.num_clients]
        skipped = sum(size > self.max_images for size in sizes)
        check_that("privacy_attack.max_images", self.max_images, skipped < len(sizes),
                   f">= {min(sizes, default=0)} (the smallest attacked client's examples), or every client is skipped; "
                   "raise it, or give each client fewer examples (more num_clients)")
        if skipped:
            log.warning("privacy_attack: %d of %d attacked clients hold more than max_images=%d examples and will be skipped",
                        skipped, len(sizes), self.max_images)

    @abstractmethod
    def reconstruct(self, target: InversionTarget, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructed (normalised images, labels) of the target's batch; ``labels`` when known."""

    def observe(self, view: ServerView) -> Observation | None:
        if self.rounds is not None and view.round not in self.rounds:
            return None
        observation = Observation()
        for update in view.updates:
            if self.clients is None or update.client_id in self.clients:
                self.attack_client(view, update, observation)
        return observation

    def attack_client(self, view: ServerView, update: ClientUpdate, observation: Observation) -> None:
        """Reconstruct one client's batch from its upload (or note why not)."""
        if update.num_examples > self.max_images:
            observation.notes[update.client_id] = {"skipped": f"{update.num_examples} examples > privacy_attack.max_images={self.max_images}"}
            return
        model = view.attack_model()
        target = InversionTarget.from_update(
            model,
            update.update,
            view.data,
            lr=view.lr,
            local_epochs=view.local_epochs,
            batch_size=view.batch_size,
            num_images=update.num_examples,
            generator=torch_generator(view.seed, "privacy-attack", view.round, update.client_id),
            stages=view.replay(model),
        )
        if not target.update:
            observation.notes[update.client_id] = {"skipped": "the update holds none of the model's parameters"}
            return
        try:
            labels = view.granted_labels(update.client_id) if self.labels == "known" else None
            images, guessed = self.reconstruct(target, labels)
        except LabelInferenceError as exc:
            observation.notes[update.client_id] = {"skipped": f"{exc}; use privacy_attack.labels=known"}
            return
        except NotApplicable as exc:
            observation.notes[update.client_id] = {"skipped": str(exc)}
            return
        observation.reconstructions.append(Reconstruction(update.client_id, images, guessed))
