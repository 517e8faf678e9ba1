"""DLG and iDLG: Euclidean gradient matching with L-BFGS."""

from __future__ import annotations

from typing import Any

import torch

from fedsim.params import check_range
from fedsim.attacks.inversion.base import GradientInversion, InversionTarget, euclidean_distance


class DLG(GradientInversion):
    """Deep Leakage from Gradients (Zhu, Liu and Han, NeurIPS 2019): random images and soft
    labels optimised jointly with L-BFGS (lr 1) to minimise the squared L2 distance between
    their gradient and the observed one."""

    def __init__(self, iterations: int = 300, **observer: Any) -> None:
        super().__init__(**observer)
        check_range("privacy_attack.iterations", iterations, low=1, integer=True)
        self.iterations = iterations

    def fixed_labels(self, target: InversionTarget) -> torch.Tensor | None:
        """Labels decided before the search; None: optimise soft labels jointly (DLG)."""
        return None

    def reconstruct(self, target: InversionTarget, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        fixed = labels if labels is not None else self.fixed_labels(target)
        x = target.random_images().requires_grad_()
        label_logits = target.random_images(target.num_images, target.num_classes).requires_grad_()
        variables = [x] if fixed is not None else [x, label_logits]
        observed = target.observed_gradient()
        optimizer = torch.optim.LBFGS(
            variables, lr=1.0, max_iter=self.iterations, history_size=100,
            tolerance_grad=1e-12, tolerance_change=1e-14,
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            y = fixed if fixed is not None else label_logits.softmax(dim=1)
            loss = euclidean_distance(target.gradient(x, y), observed)
            loss.backward(inputs=variables)
            return loss

        optimizer.step(closure)
        return x.detach(), (fixed if fixed is not None else label_logits.detach().argmax(dim=1))


class IDLG(DLG):
    """Improved DLG (Zhao, Mopuri and Bilen, 2020): DLG with the label read off the last
    layer's gradient (the row that sums negative), so only the image is optimised."""

    def fixed_labels(self, target: InversionTarget) -> torch.Tensor | None:
        return target.infer_labels()
