"""FedSAM: FedAvg with sharpness-aware local steps."""

from __future__ import annotations

from fedsim.params import check_range
from fedsim.strategies.fedavg import FedAvg
from fedsim.training import GradientFn, sam_gradient


class FedSAM(FedAvg):
    """FedSAM (Qu et al., "Generalized Federated Learning via Sharpness Aware Minimization", ICML 2022;
    as FedSpeed's reference code runs it, client/fedsam.py): every local step takes the gradient at
    the ascent point w + rho·g/||g|| (SAM), then the run's optimizer; the server averages as FedAvg.
    FedSpeed without its prox correction and without the server's +mean(h)."""

    def __init__(self, rho: float = 0.1) -> None:
        check_range("strategy.rho", rho, low=0)
        self.rho = rho

    def gradient(self) -> GradientFn:
        return sam_gradient(self.rho)
