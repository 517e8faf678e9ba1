"""The standard robust aggregators, reusing Flower's implementations (``flwr.serverapp.strategy``).

Flower's Krum/MultiKrum/Bulyan/FedMedian/FedTrimmedAvg are whole Flower strategies; here their
selection and combination functions run as fedsim defenses, so they compose with any fedsim
strategy: a selection becomes the Verdict's ``keep`` mask, a coordinate-wise combination its
``combined`` update (which stands in for every kept update before the strategy aggregates).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from fedsim.attack import BENIGN, MALICIOUS
from fedsim.defense import Defense, Verdict
from fedsim.state import Tensors, to_record
from fedsim.strategy import ClientUpdate

log = logging.getLogger("fedsim")


def krum_selection(updates: list[ClientUpdate], num_malicious: int, num_selected: int) -> list[bool]:
    """Which updates Flower's (Multi-)Krum selects, as a mask over ``updates``."""
    records = [RecordDict({"arrays": to_record(u.update)}) for u in updates]
    chosen = {id(r) for r in select_multikrum(records, num_malicious, min(num_selected, len(records)))}
    return [id(r) in chosen for r in records]


def selection_verdict(keep: list[bool], combined: Tensors | None = None) -> Verdict:
    """Kept updates are labelled benign, dropped ones malicious."""
    return Verdict(keep=keep, labels=[BENIGN if k else MALICIOUS for k in keep], combined=combined)


def as_arrays(updates: list[ClientUpdate]) -> list[list[np.ndarray]]:
    """Each update as a list of numpy arrays, in key order."""
    return [[v.detach().cpu().numpy() for v in u.update.values()] for u in updates]


def as_tensors(template: ClientUpdate, arrays: list[np.ndarray]) -> Tensors:
    """Arrays back to named tensors shaped, typed and placed like ``template``'s update."""
    return {
        k: torch.as_tensor(np.asarray(a), dtype=v.dtype).reshape(v.shape).to(v.device)
        for (k, v), a in zip(template.update.items(), arrays)
    }


def check_num_malicious(num_malicious: int) -> None:
    if num_malicious < 0:
        raise ValueError(f"defense.num_malicious={num_malicious}: must be >= 0")


class MultiKrum(Defense):
    """Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017): keep the ``num_selected`` updates with the smallest sum of squared
    distances to their n - f - 2 nearest neighbours (Flower's ``select_multikrum``)."""

    def __init__(self, num_malicious: int = 2, num_selected: int = 5) -> None:
        check_num_malicious(num_malicious)
        if num_selected < 1:
            raise ValueError(f"defense.num_selected={num_selected}: must be >= 1")
        self.num_malicious, self.num_selected = num_malicious, num_selected

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        return selection_verdict(krum_selection(updates, self.num_malicious, self.num_selected))


class Krum(MultiKrum):
    """Krum (Blanchard et al., NeurIPS 2017): Multi-Krum keeping a single update."""

    def __init__(self, num_malicious: int = 2) -> None:
        super().__init__(num_malicious, num_selected=1)


class Bulyan(Defense):
    """Bulyan (El Mhamdi et al., "The Hidden Vulnerability of Distributed Learning in Byzantium",
    ICML 2018): Multi-Krum selects theta = n - 2f updates; per coordinate, the mean of the
    beta = theta - 2f values closest to their median (Flower's ``aggregate_n_closest_weights``).
    Needs n >= 4f + 3; a smaller round is skipped, as Flower's Bulyan does."""

    def __init__(self, num_malicious: int = 1) -> None:
        check_num_malicious(num_malicious)
        self.num_malicious = num_malicious

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        n, f = len(updates), self.num_malicious
        if n < 4 * f + 3:
            log.warning("round %d: Bulyan needs %d updates (4f+3, f=%d), got %d: round skipped", server_round, 4 * f + 3, f, n)
            return Verdict(keep=[False] * n, labels=[BENIGN] * n)
        keep = krum_selection(updates, f, n - 2 * f)
        selected = as_arrays([u for u, k in zip(updates, keep) if k])
        medians = [np.median(np.stack(layer), axis=0) for layer in zip(*selected)]
        combined = aggregate_n_closest_weights(medians, selected, n - 4 * f)
        return selection_verdict(keep, as_tensors(updates[0], combined))


class Median(Defense):
    """Coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018), as Flower's FedMedian computes it."""

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        arrays = as_arrays(updates)
        combined = [np.median(np.stack(layer), axis=0) for layer in zip(*arrays)]
        return selection_verdict([True] * len(updates), as_tensors(updates[0], combined))


class TrimmedMean(Defense):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): drop the ``beta`` fraction of largest
    and of smallest values per coordinate, average the rest (Flower's FedTrimmedAvg ``trim_mean``)."""

    def __init__(self, beta: float = 0.2) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"defense.beta={beta}: must be in [0, 0.5)")
        self.beta = beta

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        arrays = as_arrays(updates)
        combined = [trim_mean(np.stack(layer), self.beta) for layer in zip(*arrays)]
        return selection_verdict([True] * len(updates), as_tensors(updates[0], combined))
