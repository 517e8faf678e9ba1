"""DP-SGD for the clients of the strategies that run it (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016).

Each step draws a Poisson batch (every example joins with probability ``q``), computes
per-example gradients of the trainable parameters with ``torch.func`` (vmap over grad),
clips each to L2 norm ``clip``, sums them, adds Gaussian noise N(0, (sigma·clip)²) and
divides by the expected batch size ``q·n``. Parameters outside ``trainable`` (frozen
backbone, FFA-LoRA's A) take no part: not in the update, not in the clipping norm.
The privacy spent is accounted with Opacus' RDP accountant for the sampled Gaussian
mechanism (Mironov et al., 2019), composed over all the steps a client has taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad_and_value, vmap

from fedsim.params import check_range, check_that
from fedsim.training import Batch, GradientFn, LossFn, Params


@dataclass(frozen=True)
class DPConfig:
    """The ``dp`` config node. DP-SGD is on when ``noise_multiplier > 0`` or ``epsilon`` is set.

    ``epsilon`` (a target for the whole run) overrides ``noise_multiplier``: each client solves
    for the smallest sigma whose accountant reaches at most ``epsilon`` after all its steps.

    The noise and the Poisson batch sampling are drawn from a secret per-run key (OS entropy, kept in
    the strategy's checkpointed state only), so knowing the public run seed does not let anyone
    regenerate and subtract the noise. ``reproducible_noise=true`` draws them from the run seed instead
    (bit-identical reruns, e.g. across backends), which voids the privacy guarantee against anyone who
    knows the seed.
    """

    noise_multiplier: float = 0.0
    clip: float = 1.0
    delta: float = 1e-5
    epsilon: float | None = None
    reproducible_noise: bool = False  # True: noise and batch sampling from the public run seed (never for a real privacy claim)

    def __post_init__(self) -> None:
        check_range("dp.noise_multiplier", self.noise_multiplier, low=0)
        check_range("dp.clip", self.clip, low=0, low_open=True)
        check_range("dp.delta", self.delta, 0, 1, low_open=True, high_open=True)
        if self.epsilon is not None:
            check_range("dp.epsilon", self.epsilon, low=0, low_open=True)
        check_that("dp.reproducible_noise", self.reproducible_noise, isinstance(self.reproducible_noise, bool), "true or false")

    @property
    def enabled(self) -> bool:
        return self.noise_multiplier > 0 or self.epsilon is not None

    def sigma(self, sample_rate: float, total_steps: int) -> float:
        """The noise multiplier to use: the configured one, or the one solved from ``epsilon``."""
        if self.epsilon is None:
            return self.noise_multiplier
        from opacus.accountants.utils import get_noise_multiplier  # deferred: importing opacus costs ~3 s

        return float(
            get_noise_multiplier(
                target_epsilon=self.epsilon, target_delta=self.delta, sample_rate=sample_rate, steps=total_steps
            )
        )


def epsilon_spent(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``steps`` sampled-Gaussian steps (RDP accountant; 0 steps: 0)."""
    if steps <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


def poisson_batches(n: int, sample_rate: float, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index sets, each holding every one of ``n`` examples independently with probability ``sample_rate``."""
    return [torch.nonzero(torch.rand(n, generator=generator) < sample_rate).flatten() for _ in range(steps)]


def per_sample_grads(loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[Params, torch.Tensor]:
    """Per-example gradients of ``loss_fn`` at ``params`` (each (B, *shape)) and the per-example losses."""
    params = {n: t.detach() for n, t in params.items()}
    if len(y) == 0:
        return {n: t.new_zeros((0, *t.shape)) for n, t in params.items()}, x.new_zeros(0, dtype=torch.float32)

    def loss_one(p: Params, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(p, xi.unsqueeze(0), yi.unsqueeze(0))

    return vmap(grad_and_value(loss_one), in_dims=(None, 0, 0))(params, x, y)


def dp_gradient(clip: float, sigma: float, expected_batch: float, generator: torch.Generator) -> GradientFn:
    """DP-SGD's gradient estimator for the one training loop: per-example gradients clipped to
    ``clip``, summed, Gaussian noise N(0, (sigma·clip)²) added, divided by the expected batch size."""

    def gradient(loss_fn: LossFn, params: Params, batch: Batch) -> tuple[float, Params]:
        grads, losses = per_sample_grads(loss_fn, params, *batch)
        loss = float(losses.mean()) if len(losses) else float("nan")
        return loss, private_gradient(grads, clip, sigma, expected_batch, generator)

    return gradient


def private_gradient(
    per_sample: dict[str, torch.Tensor], clip: float, sigma: float, expected_batch: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Clip each example's gradient to norm ``clip`` (over all tensors jointly), sum, add N(0, (sigma·clip)²), / expected batch."""
    first = next(iter(per_sample.values()))
    if first.shape[0]:
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_sample.values()))
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        summed = {n: torch.einsum("b,b...->...", factor, g) for n, g in per_sample.items()}
    else:  # an empty Poisson batch still releases noise
        summed = {n: torch.zeros(g.shape[1:], dtype=g.dtype, device=g.device) for n, g in per_sample.items()}
    return {
        n: (s + sigma * clip * torch.randn(s.shape, generator=generator, device=s.device, dtype=s.dtype)) / expected_batch
        for n, s in summed.items()
    }
