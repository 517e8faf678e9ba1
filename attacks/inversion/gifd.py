"""GIFD: gradient inversion over a generator's latent space and then its feature domains."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.params import check_choice, check_range, check_that
from fedsim.attacks.inversion.base import GradientInversion, InversionTarget
from fedsim.attacks.inversion.gifd_generator import BlockGenerator, cached_generator
from fedsim.data import digits
from fedsim.privacy import DataFacts, Observation, ServerView

AUX_SOURCES = ("test", "digits")
SCORES = ("objective", "matching")


@dataclass
class StageResult:
    """One stage of one restart: its images and the two ways of scoring them."""

    restart: int
    stage: int  # 0: the latent search; k >= 1: the search of block k's input feature
    objective: float  # the searched objective: matching + tv_weight TV + l2_weight l2
    matching: float  # the gradient-matching cost alone (the official code's _score_trial)
    images: torch.Tensor


def project_onto_l1_ball(v: torch.Tensor, radius: float) -> torch.Tensor:
    """Euclidean projection of each sample (first dimension) of ``v`` onto the l1 ball of ``radius``
    (Duchi et al., ICML 2008)."""
    flat = v.flatten(1)
    magnitude = flat.abs()
    ranked, _ = magnitude.sort(dim=1, descending=True)
    cumulative = ranked.cumsum(dim=1)
    index = torch.arange(1, flat.shape[1] + 1, device=v.device, dtype=v.dtype)
    count = (ranked * index > cumulative - radius).sum(dim=1, keepdim=True)
    threshold = (cumulative.gather(1, count - 1) - radius) / count
    projected = flat.sign() * (magnitude - threshold).clamp(min=0)
    inside = magnitude.sum(dim=1, keepdim=True) <= radius
    return torch.where(inside, flat, projected).view_as(v)


class GIFD(GradientInversion):
    """GIFD (Fang, Chen, Wang, Xu, Wang, Qian, Liu and Wang, "GIFD: A Generative Gradient
    Inversion Method with Feature Domain Optimization", ICCV 2023).

    Labels by the iDLG rule. Per restart, stage 0 searches the generator's latent code
    (norm kept fixed); stage k >= 1 searches the input feature of block k, the image being
    the rest of the generator applied to it, and after every step projects the feature's
    deviation from the stage's start into an l1 ball of radius ``radii[k-1]`` x feature
    size (the paper's absolute radii do not transfer to a small generator; per element, and
    growing per stage like the official StyleGAN2 schedule 2000:3000:4000, they do). Every
    stage takes ``steps`` Adam steps with the official schedule (ramp-up over the first 5%,
    cosine ramp-down over the last 75%). Each stage starts from the previous stage's block
    output; ``score`` picks the reconstruction among all stages of all restarts: ``objective``
    (the searched 1 - cosine + ``tv_weight`` TV + ``l2_weight`` l2) or ``matching`` (the
    gradient-matching cost alone, as the official ``_score_trial``). ``stages=1`` is the
    latent-only search (GGL-style, with Adam in place of GGL's CMA-ES), GIFD's ablation.

    The prior is a small VAE decoder trained on ``aux_data`` (``test``: the held-out test
    split no client holds; ``digits``: sklearn's 8x8 digits resized, an out-of-distribution
    prior), cached in ``cache_dir``. (The official ``choose_optimal`` returns the last
    restart's image with the best restart's score; here the scored image is the one returned.)
    """

    def __init__(
        self,
        steps: int = 150,
        restarts: int = 2,
        lr: float = 0.1,
        feature_lr: float = 0.1,
        radii: Sequence[float] = (0.2, 0.3, 0.4),
        stages: int = 4,
        score: str = "objective",
        tv_weight: float = 1e-4,
        l2_weight: float = 1e-4,
        latent_dim: int = 16,
        generator_epochs: int = 40,
        aux_data: str = "test",
        cache_dir: str = "~/.cache/fedsim",
        **observer: Any,
    ) -> None:
        super().__init__(**observer)
        for field, value in (("steps", steps), ("restarts", restarts), ("latent_dim", latent_dim),
                             ("generator_epochs", generator_epochs)):
            check_range(f"privacy_attack.{field}", value, low=1, integer=True)
        blocks = len(BlockGenerator((1, 4, 4)).blocks)
        check_range("privacy_attack.stages", stages, low=1, high=blocks, integer=True)
        check_that("privacy_attack.radii", list(radii), len(radii) == blocks - 1,
                   f"one radius per intermediate feature stage ({blocks - 1})")
        check_choice("privacy_attack.score", score, SCORES)
        for field, value in (("lr", lr), ("feature_lr", feature_lr), *((f"radii[{i}]", r) for i, r in enumerate(radii))):
            check_range(f"privacy_attack.{field}", value, low=0, low_open=True)
        check_choice("privacy_attack.aux_data", aux_data, AUX_SOURCES)
        self.steps, self.restarts, self.lr, self.feature_lr = steps, restarts, lr, feature_lr
        self.radii, self.tv_weight, self.l2_weight = list(radii), tv_weight, l2_weight
        self.num_stages, self.score = stages, score
        self.latent_dim, self.generator_epochs = latent_dim, generator_epochs
        self.aux_data, self.cache_dir = aux_data, cache_dir
        self.generator: BlockGenerator | None = None

    def observe(self, view: ServerView) -> Observation | None:
        if self.generator is None and (self.rounds is None or view.round in self.rounds):
            self.prepare_prior(view.data, view.held_out, view.seed)
        return super().observe(view)

    def prepare_prior(self, data: DataFacts, held_out: np.ndarray, seed: int) -> None:
        """Load (or train once and cache) the generator on the server's auxiliary images
        (``held_out``, the server's own inputs, or sklearn digits, as ``aux_data`` says)."""
        pixels = auxiliary_pixels(self.aux_data, data, held_out)
        self.generator = cached_generator(pixels, self.latent_dim, self.generator_epochs, seed, Path(self.cache_dir))

    def reconstruct(self, target: InversionTarget, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y = labels if labels is not None else target.infer_labels()
        best = min(self.candidates(target, y), key=lambda result: getattr(result, self.score))
        return best.images, y

    def candidates(self, target: InversionTarget, y: torch.Tensor) -> list[StageResult]:
        """Every stage of every restart, scored both ways."""
        if self.generator is None:
            raise RuntimeError("GIFD.prepare_prior must run before reconstruct")
        self.generator.to(target.mean.device)
        return [result for restart in range(self.restarts) for result in self.stages(target, y, restart)]

    def stages(self, target: InversionTarget, y: torch.Tensor, restart: int) -> Iterator[StageResult]:
        """One restart: the images after the latent stage and after each feature stage."""
        g = self.generator
        h = target.random_images(target.num_images, self.latent_dim)
        for k in range(self.num_stages):
            h = self.search(target, y, k, h)
            with torch.no_grad():
                images = target.from_pixels(g.forward_from(k, h))
            matching = target.matching_objective(images, y, tv_weight=0.0).item()  # differentiates the model
            yield StageResult(restart, k, self.objective(target, images, y).item(), matching, images)
            with torch.no_grad():
                h = g.blocks[k](h)

    def search(self, target: InversionTarget, y: torch.Tensor, k: int, start: torch.Tensor) -> torch.Tensor:
        """Optimise the input of block ``k`` from ``start`` (Adam on the official schedule)."""
        h = start.clone().requires_grad_()
        optimizer = torch.optim.Adam([h], lr=self.lr if k == 0 else self.feature_lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: ramp(i / self.steps))
        for _ in range(self.steps):
            optimizer.zero_grad()
            self.objective(target, target.from_pixels(self.generator.forward_from(k, h)), y).backward(inputs=[h])
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                h.copy_(self.constrain(k, h, start))
        return h.detach()

    def constrain(self, k: int, h: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Stage 0: the latent keeps its starting norm; stage k: ``h`` stays in the l1 ball around ``start``."""
        if k == 0:
            return h * (start.norm(dim=1, keepdim=True) / h.norm(dim=1, keepdim=True))
        return start + project_onto_l1_ball(h - start, self.radius(k, start))

    def radius(self, k: int, start: torch.Tensor) -> float:
        """The l1 radius of stage ``k``: ``radii[k-1]`` per feature element."""
        return self.radii[k - 1] * start[0].numel()

    def objective(self, target: InversionTarget, images: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return target.matching_objective(images, y, self.tv_weight) + self.l2_weight * images.pow(2).mean()


def ramp(t: float, rampdown: float = 0.75, rampup: float = 0.05) -> float:
    """The official GIFD learning-rate factor at progress ``t`` in [0, 1): linear ramp-up over the first
    ``rampup``, cosine ramp-down over the last ``rampdown`` (StyleGAN projector's schedule)."""
    down = 0.5 - 0.5 * math.cos(min(1.0, (1.0 - t) / rampdown) * math.pi)
    return down * min(1.0, t / rampup)


def auxiliary_pixels(source: str, data: DataFacts, held_out: np.ndarray) -> np.ndarray:
    """Auxiliary images in [0, 1] shaped like the task's: the server's held-out test split, or sklearn digits resized."""
    if source == "test":
        return data.denormalise(held_out)
    aux = digits(test_fraction=0.2)
    pixels = torch.from_numpy(aux.denormalise(np.concatenate([aux.x_train, aux.x_test])))
    c, h, w = data.input_shape
    resized = torch.nn.functional.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False)
    return resized.repeat(1, c, 1, 1).clamp(0, 1).numpy()
