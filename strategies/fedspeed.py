"""FedSpeed: FedDyn's prox-correction with perturbation-merged (sharpness-aware) local gradients."""

from __future__ import annotations

from fedsim.params import check_range
from fedsim.strategies.feddyn import FedDyn
from fedsim.training import GradientFn, sam_gradient


class FedSpeed(FedDyn):
    """FedSpeed (Sun et al., "FedSpeed: Larger Local Interval, Less Communication Round, and
    Higher Generalization Accuracy", ICLR 2023; reference code woodenchild95/FL-Simulator).

    The prox-corrected local step and the server's correction are FedDyn's (see
    :class:`~fedsim.strategies.feddyn.FedDyn`, as the reference's client/fedspeed.py and
    server/FedSpeed.py share them with its FedDyn); the gradient is merged with a perturbed one:
    g1 = grad f(w); g2 = grad f(w + rho·g1/||g1||); g = (1-alpha)·g1 + alpha·g2, then
    d = g + lamb·(h_i - w_t), clipped to ``max_grad_norm``, and the step with weight decay
    ``weight_decay + lamb`` (added after clipping, as the reference's SGD does), so the full step
    is g + lamb·(w - w_t + h_i) + weight_decay·w. The server keeps every h_i and sends it with the
    client's payload (counted in ``bytes_down``), so its sum of the h_i is exact whatever happens
    to an upload; h_i += w_i - w_t for every aggregated client and
    w_{t+1} = combine(w_i - w_t) + w_t + mean over ALL clients of h_i.

    ``lamb`` is the prox weight (the paper's 1/lambda, the reference code's ``lamb``).
    """

    def __init__(
        self,
        num_clients: int,
        rho: float = 0.1,
        alpha: float = 1.0,
        lamb: float = 0.1,
        weight_decay: float = 1e-3,
        max_grad_norm: float = 10.0,
        lr_decay: float = 0.998,
        server_correction: bool = True,
        correction_sign: int = 1,
    ) -> None:
        check_range("strategy.rho", rho, low=0)
        check_range("strategy.alpha", alpha, 0, 1)
        super().__init__(num_clients, lamb, weight_decay, max_grad_norm, lr_decay, server_correction, correction_sign)
        self.rho, self.alpha = rho, alpha

    def gradient(self) -> GradientFn:
        return sam_gradient(self.rho, self.alpha)
