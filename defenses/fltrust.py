"""FLTrust: trust scores from the server's own update on a small clean root dataset."""

from __future__ import annotations

import torch

from fedsim.component import RunFacts
from fedsim.defense import Defense, Verdict
from fedsim.defenses.robust import selection_verdict
from fedsim.params import check_range, check_that
from fedsim.state import Tensors, stack_flat, unflatten
from fedsim.strategy import ClientUpdate, Combine


class FLTrust(Defense):
    """FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping", NDSS 2021). Each round the server trains on ``root_size`` clean examples (100 in
    the paper, drawn uniformly from the training data) from the global model, giving g0. A client's
    trust score is TS_i = ReLU(cos(g_i, g0)); its update is rescaled to ||g0||; the aggregate is
    sum_i TS_i * (||g0|| / ||g_i||) g_i / sum_i TS_i (zero when every score is 0: the model stays).

    Screening keeps the updates with a positive score and labels the others malicious (a zero score
    is a zero weight, so this is the paper's aggregate, with detection scored on it). Aggregation
    weights ignore example counts, as in the paper. The server's update is plain local training with
    the run's settings (see :mod:`fedsim.engine.root_training`)."""

    def __init__(self, root_size: int = 100) -> None:
        check_range("defense.root_size", root_size, low=1, integer=True)
        self.root_size = root_size
        self.reference: Tensors | None = None  # this round's g0; recomputed every round, so nothing to checkpoint

    def check_run(self, run: RunFacts) -> None:
        total = sum(run.partition_sizes)
        check_that("defense.root_size", self.root_size, self.root_size <= total,
                   f"at most the {total} training examples the root dataset is drawn from")

    def root_examples(self) -> int:
        return self.root_size

    def observe_root_update(self, server_round: int, update: Tensors) -> None:
        self.reference = update

    def scores(self, updates: list[ClientUpdate]) -> tuple[torch.Tensor, torch.Tensor, list[str], Tensors]:
        """(trust scores, flattened client updates, key order, template) for ``updates`` against g0."""
        if self.reference is None:
            raise RuntimeError("FLTrust: no root update this round (the engine gives one to a defense with root_examples > 0)")
        names = list(updates[0].update)
        reference = {n: self.reference[n] for n in names}
        rows, names, like = stack_flat([reference, *(u.update for u in updates)])
        g0, points = rows[0], rows[1:]
        norms = torch.linalg.vector_norm(points, dim=1)
        cos = (points @ g0) / (norms * torch.linalg.vector_norm(g0)).clamp_min(1e-12)
        return torch.relu(cos), points, names, like

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        trust = self.scores(updates)[0]
        return selection_verdict([bool(t > 0) for t in trust])

    def combiner(self) -> Combine:
        def combine(updates: list[ClientUpdate]) -> Tensors:
            trust, points, names, like = self.scores(updates)
            g0_norm = torch.linalg.vector_norm(torch.cat([self.reference[n].flatten().float() for n in names]))
            scaled = points * (g0_norm / torch.linalg.vector_norm(points, dim=1).clamp_min(1e-12))[:, None]
            total = float(trust.sum())
            aggregate = (trust[:, None] * scaled).sum(0) / total if total > 0 else torch.zeros_like(points[0])
            return unflatten(aggregate, names, like)

        return combine
