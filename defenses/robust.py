"""The standard robust aggregators, reusing Flower's implementations (``flwr.serverapp.strategy``).

Flower's Krum/MultiKrum/Bulyan/FedMedian/FedTrimmedAvg are whole Flower strategies; here their
selection and combination functions run as the two fedsim defense parts, so they compose with
any fedsim strategy: a selection is a screen (the Verdict's ``keep`` mask), a coordinate-wise
rule a combine handed to the strategy in place of its own (never pasted into the updates).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum

from fedsim.attack import BENIGN, MALICIOUS
from fedsim.defense import Defense, Verdict
from fedsim.component import RunFacts
from fedsim.params import check_range, check_that
from fedsim.state import Tensors, to_record
from fedsim.strategy import ClientUpdate, Combine

log = logging.getLogger("fedsim")


def krum_selection(updates: list[ClientUpdate], num_malicious: int, num_selected: int) -> list[bool]:
    """Which updates Flower's (Multi-)Krum selects, as a mask over ``updates``."""
    records = [RecordDict({"arrays": to_record(u.update)}) for u in updates]
    chosen = {id(r) for r in select_multikrum(records, num_malicious, min(num_selected, len(records)))}
    return [id(r) in chosen for r in records]


def selection_verdict(keep: list[bool]) -> Verdict:
    """Kept updates are labelled benign, dropped ones malicious."""
    return Verdict(keep=keep, labels=[BENIGN if k else MALICIOUS for k in keep])


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
    check_range("defense.num_malicious", num_malicious, low=0, integer=True)


class MultiKrum(Defense):
    """Multi-Krum (Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
    Descent", NeurIPS 2017): keep the ``num_selected`` updates with the smallest sum of squared
    distances to their n - f - 2 nearest neighbours (Flower's ``select_multikrum``)."""

    def __init__(self, num_malicious: int = 2, num_selected: int = 5) -> None:
        check_num_malicious(num_malicious)
        check_range("defense.num_selected", num_selected, low=1, integer=True)
        self.num_malicious, self.num_selected = num_malicious, num_selected

    def check_run(self, run: RunFacts) -> None:
        n, f = run.clients_per_round, self.num_malicious
        check_that("defense.num_malicious", f, n >= 2 * f + 3,
                   f"<= (clients_per_round - 3) / 2 with clients_per_round={n} (Krum needs 2f + 3 = {2 * f + 3} updates "
                   "per round); raise clients_per_round or lower defense.num_malicious")
        check_that("defense.num_selected", self.num_selected, self.num_selected <= n, f"at most clients_per_round={n}")

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

    def check_run(self, run: RunFacts) -> None:
        n, f = run.clients_per_round, self.num_malicious
        check_that("defense.num_malicious", f, n >= 4 * f + 3,
                   f"<= (clients_per_round - 3) / 4 with clients_per_round={n} (Bulyan needs 4f + 3 = {4 * f + 3} updates "
                   "per round); raise clients_per_round or lower defense.num_malicious")

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        n, f = len(updates), self.num_malicious
        if n < 4 * f + 3:
            log.warning("round %d: Bulyan needs %d updates (4f+3, f=%d), got %d: round skipped", server_round, 4 * f + 3, f, n)
            return Verdict(keep=[False] * n, labels=[BENIGN] * n)
        return selection_verdict(krum_selection(updates, f, n - 2 * f))

    def combiner(self) -> Combine:
        """Per coordinate, the mean of the theta - 2f selected values closest to their median."""

        def combine(selected: list[ClientUpdate]) -> Tensors:
            arrays = as_arrays(selected)
            medians = [np.median(np.stack(layer), axis=0) for layer in zip(*arrays)]
            return as_tensors(selected[0], aggregate_n_closest_weights(medians, arrays, len(selected) - 2 * self.num_malicious))

        return combine


class Median(Defense):
    """Coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018), as Flower's FedMedian computes it."""

    def combiner(self) -> Combine:
        def combine(updates: list[ClientUpdate]) -> Tensors:
            return as_tensors(updates[0], [np.median(np.stack(layer), axis=0) for layer in zip(*as_arrays(updates))])

        return combine


class TrimmedMean(Defense):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): drop the ``beta`` fraction of largest
    and of smallest values per coordinate, average the rest (Flower's FedTrimmedAvg ``trim_mean``)."""

    def __init__(self, beta: float = 0.2) -> None:
        check_range("defense.beta", beta, 0.0, 0.5, high_open=True)
        self.beta = beta

    def combiner(self) -> Combine:
        def combine(updates: list[ClientUpdate]) -> Tensors:
            return as_tensors(updates[0], [trim_mean(np.stack(layer), self.beta) for layer in zip(*as_arrays(updates))])

        return combine
