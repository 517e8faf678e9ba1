"""Unreliable clients: benign, but training on scarce, degraded data (blur, noise, low resolution)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fedsim.params import check_choice, check_range, check_that
from fedsim.attack import UNRELIABLE, SelectedClientsAttack

DEGRADATIONS = ("blur", "noise", "low_res")


class Unreliable(SelectedClientsAttack):
    """Unreliable clients as MUD-HoG defines them (Nguyen et al., ESORICS 2022): each round a
    client uses each sample with probability ``use_prob`` (0.3: the paper uses a batch with that
    probability) and degrades a used sample with probability ``degrade_prob`` (0.5): Gaussian blur
    (kernel ``kernel``, ``blur_sigma``), additive pixel noise (``noise_sigma``), or 4x lower resolution.
    Their true role is ``unreliable``, not malicious."""

    name = UNRELIABLE
    role = UNRELIABLE

    def __init__(
        self,
        fraction: float | None = None,
        count: int | None = None,
        degradation: str = "blur",
        use_prob: float = 0.3,
        degrade_prob: float = 0.5,
        kernel: int = 7,
        blur_sigma: float = 3.0,
        noise_sigma: float = 1.0,
    ) -> None:
        super().__init__(fraction, count)
        check_choice("attack.degradation", degradation, DEGRADATIONS)
        for field, p in (("use_prob", use_prob), ("degrade_prob", degrade_prob)):
            check_range(f"attack.{field}", p, 0, 1, low_open=True)
        check_range("attack.kernel", kernel, low=1, integer=True)
        check_that("attack.kernel", kernel, kernel % 2 == 1, "a positive odd number")
        check_range("attack.blur_sigma", blur_sigma, low=0, low_open=True)
        check_range("attack.noise_sigma", noise_sigma, low=0, low_open=True)
        self.degradation = degradation
        self.use_prob, self.degrade_prob = use_prob, degrade_prob
        self.kernel, self.blur_sigma, self.noise_sigma = kernel, blur_sigma, noise_sigma

    def poison_data(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        used = torch.rand(len(y), generator=generator) < self.use_prob
        used[torch.randint(len(y), (1,), generator=generator)] = True  # never an empty dataset
        degraded = (torch.rand(len(y), generator=generator) < self.degrade_prob)[used].to(x.device)
        x, y = x[used.to(x.device)].clone(), y[used.to(y.device)]
        x[degraded] = self.degrade(x[degraded], generator)
        return x, y

    def degrade(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The chosen degradation of a batch of NCHW images."""
        if self.degradation == "noise":
            return x + self.noise_sigma * torch.randn(x.shape, generator=generator).to(x.device)
        if self.degradation == "low_res":
            h, w = x.shape[-2:]
            small = F.interpolate(x, size=(max(1, h // 4), max(1, w // 4)), mode="area")
            return F.interpolate(small, size=(h, w), mode="nearest")
        offsets = torch.arange(self.kernel, dtype=x.dtype, device=x.device) - self.kernel // 2
        g = torch.exp(-(offsets**2) / (2 * self.blur_sigma**2))
        g = g / g.sum()
        c = x.shape[1]
        weight = (g[:, None] * g[None, :]).expand(c, 1, self.kernel, self.kernel)
        return F.conv2d(F.pad(x, [self.kernel // 2] * 4, mode="replicate"), weight, groups=c)
