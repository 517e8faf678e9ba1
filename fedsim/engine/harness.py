"""The scoring harness: the only place that holds the simulation's ground truth.

Roles and attack kinds come from the server's own attack assignment (a pure function of the
seed), never from the wire. The harness scores defenses (detection precision / recall),
evaluates the models a strategy names (the honest clients' mean for per-client models),
measures attacks (e.g. attack success rate) and scores privacy observers' reconstructions
against the true batches. Strategies, defenses and observers never see any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.attack import MALICIOUS, Attack
from fedsim.engine.context import RunContext
from fedsim.engine.reconstruction_scores import save_grid, score_batch
from fedsim.evaluation import evaluate, evaluate_for_labels
from fedsim.privacy import Observation
from fedsim.state import ClientState
from fedsim.strategy import ScoredModel, Strategy


@dataclass(frozen=True)
class Truth:
    """Every client's true role and attack kind."""

    roles: tuple[str, ...]
    kinds: tuple[str, ...]

    @classmethod
    def of(cls, attack: Attack, num_clients: int, seed: int) -> "Truth":
        acting = [attack.for_client(c, num_clients, seed) or Attack() for c in range(num_clients)]
        return cls(tuple(a.role for a in acting), tuple(a.name for a in acting))

    def malicious(self, client_id: int) -> bool:
        return self.roles[client_id] == MALICIOUS

    @property
    def honest_clients(self) -> list[int]:
        return [c for c, role in enumerate(self.roles) if role != MALICIOUS]


def score_models(
    ctx: RunContext, strategy: Strategy, attack: Attack, truth: Truth, global_state: Any, client_states: dict[int, ClientState]
) -> dict[str, float]:
    """Test metrics (accuracy, loss, attack metrics) of the strategy's scored models.

    One global model: its metrics. Per-client models: the mean over the honest clients that
    have one, with ``eval_clients`` saying how many.
    """
    x, y = ctx.test_data()
    with ctx.new_model.lending() as new_model:  # the scored models live only here: pooled ones, reset, not copied
        models = strategy.scored_models(global_state, new_model, client_states)
        if None in models:
            return score_one(models[None], attack, x, y)
        honest = [models[c] for c in truth.honest_clients if c in models]
        if not honest:
            return {"test_acc": float("nan"), "test_loss": float("nan"), "eval_clients": 0}
        scores = [score_one(m, attack, x, y) for m in honest]
    return {**{k: float(np.mean([s[k] for s in scores])) for k in scores[0]}, "eval_clients": len(honest)}


def score_one(scored: ScoredModel, attack: Attack, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    if scored.label_counts is None:
        metrics = evaluate(scored.model, x, y)
    else:
        metrics = evaluate_for_labels(scored.model, x, y, scored.label_counts)
    return {**metrics, **attack.test_metrics(scored.model, x, y)}


def score_privacy(ctx: RunContext, observer_name: str, server_round: int, observation: Observation, out_dir: Path) -> dict[str, Any]:
    """Score an observer's reconstructions against the true batches; one PNG grid per client."""
    results: dict[str, dict[str, Any]] = {str(c): dict(note) for c, note in observation.notes.items()}
    for rec in observation.reconstructions:
        x_true, y_true = ctx.client_data(rec.client_id)
        true_px = ctx.data.denormalise(x_true.cpu().numpy())
        rec_px = ctx.data.denormalise(torch.nan_to_num(rec.images).detach().cpu().numpy())  # a diverged attack scores as what it made
        scores = score_batch(true_px, y_true.cpu().numpy(), rec_px, rec.labels.cpu().numpy())
        title = f"{observer_name}, round {server_round}, client {rec.client_id}: {scores['psnr']:.1f} dB"
        save_grid(true_px, rec_px, out_dir / f"privacy_{observer_name}_round{server_round}_client{rec.client_id}.png", title)
        results[str(rec.client_id)] = scores
    if not results:
        return {}
    scored = [r for r in results.values() if "psnr" in r]
    means = {k: float(np.mean([r[k] for r in scored])) for k in ("psnr", "ssim", "mse", "label_acc")} if scored else {}
    return {"privacy": {"attack": observer_name, **means, "clients": results}}

