"""Inverting Gradients: cosine matching of the (simulated) update with a TV prior."""

from __future__ import annotations

from typing import Any

import torch

from fedsim.params import check_range
from fedsim.attacks.inversion.base import GradientInversion, InversionTarget


class InvertingGradients(GradientInversion):
    """Inverting Gradients (Geiping, Bauermeister, Dröge and Moeller, NeurIPS 2020).

    Minimises 1 - cosine(simulated update, observed update) over all layers at once plus
    ``tv_weight`` x total variation; Adam on the sign of the gradient, learning rate x0.1
    at 3/8, 5/8 and 7/8 of the iterations, images clamped to the pixel box after every
    step. A multi-step local update is matched by unrolling the client's local SGD steps.
    ``restarts`` independent trials; the one with the lowest objective is kept.
    """

    def __init__(
        self, iterations: int = 600, restarts: int = 1, lr: float = 0.1, tv_weight: float = 1e-2, **observer: Any
    ) -> None:
        super().__init__(**observer)
        check_range("privacy_attack.iterations", iterations, low=1, integer=True)
        check_range("privacy_attack.restarts", restarts, low=1, integer=True)
        check_range("privacy_attack.lr", lr, low=0, low_open=True)
        check_range("privacy_attack.tv_weight", tv_weight, low=0)
        self.iterations, self.restarts, self.lr, self.tv_weight = iterations, restarts, lr, tv_weight

    def reconstruct(self, target: InversionTarget, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y = labels if labels is not None else target.infer_labels()
        trials = [self.trial(target, y) for _ in range(self.restarts)]
        best_x, _ = min(trials, key=lambda trial: trial[1])
        return best_x, y

    def trial(self, target: InversionTarget, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One restart: (images, final objective)."""
        x = target.random_images().requires_grad_()
        optimizer = torch.optim.Adam([x], lr=self.lr)
        milestones = [int(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        for _ in range(self.iterations):
            optimizer.zero_grad()
            target.matching_objective(x, y, self.tv_weight).backward(inputs=[x])
            x.grad.sign_()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                target.clamp_to_pixel_box(x)
        return x.detach(), target.matching_objective(x.detach(), y, self.tv_weight).item()
