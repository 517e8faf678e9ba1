"""Federated LoRA fine-tuning, vanilla and FFA-LoRA, with optional DP-SGD on the clients."""

from __future__ import annotations

import math
import secrets
from typing import Any

import torch
from torch import nn

from fedsim.params import ParamError, check_range
from fedsim.strategies.dp import DPConfig, dp_gradient, epsilon_spent, poisson_batches
from fedsim.models.lora import lora_a_names
from fedsim.seeding import derive_seed, torch_generator
from fedsim.state import Tensors
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import LocalResult, LocalTask
from fedsim.training import TrainOutcome

DP_STEPS_KEY = "lora.dp_steps"  # client state: DP-SGD steps taken so far, for the accountant
NOISE_SEED_KEY = "dp.noise_seed"  # the per-client extra carrying its secret DP seed


class LoRA(FedAvg):
    """Federated LoRA: clients train every adapter's A and B and the classifier head; the server
    averages each of them separately (FedAvg over the adapter state). The frozen backbone is not
    exchanged: every process rebuilds it from the pretrained weights.

    Averaging A and B separately is not averaging the updates B·A: mean(B_i)·mean(A_i) differs
    from mean(B_i·A_i), the discordance FFA-LoRA removes (Sun et al., ICLR 2024).

    With ``dp`` on, each local step is DP-SGD (:mod:`fedsim.strategies.dp`) on the trainable tensors only,
    and every client reports ``dp_epsilon`` (all its steps so far, at ``dp.delta``) and ``dp_sigma``.
    """

    freeze_a = False
    persistent = ("noise_key",)

    def __init__(self, dp: dict[str, Any] | None = None, rounds: int = 1) -> None:
        check_range("strategy.rounds", rounds, low=1, integer=True)
        self.dp = DPConfig(**(dp or {}))
        self.rounds = rounds  # the horizon a dp.epsilon target is spread over
        self.noise_key: int | None = None  # server side: the run's secret DP key (checkpointed, never logged)

    def shared_names(self, model: nn.Module) -> set[str]:
        """The exchanged (and trained) tensors: adapters and head; FFA-LoRA leaves every A out."""
        a_names = lora_a_names(model)
        if not a_names:
            raise ParamError(
                f"strategy={type(self).__name__} needs a model with LoRA adapters (model=minilm_lora), got {type(model).__name__}"
            )
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        return trainable - a_names if self.freeze_a else trainable

    def init_global(self, model: nn.Module) -> Tensors:
        self.noise_key = secrets.randbits(63) if self.dp.enabled and not self.dp.reproducible_noise else None
        shared = self.shared_names(model)
        return {n: p.detach().clone() for n, p in model.named_parameters() if n in shared}

    def extra_for(self, client_id: int) -> Tensors:
        """The client's own secret DP seed, derived from the run's key (a client never learns another's)."""
        if self.noise_key is None:
            return {}
        return {NOISE_SEED_KEY: torch.tensor([derive_seed(self.noise_key, "dp-client", client_id)], dtype=torch.int64)}

    # Client side.

    def local_update(self, task: LocalTask) -> LocalResult:
        for name, p in task.model.named_parameters():
            p.requires_grad_(name in task.global_state)
        if not self.dp.enabled:
            trained, metrics = self.fit(task), {}
        else:
            trained, metrics = self.dp_sgd(task)
        return LocalResult(task.delta(trained.params), len(task.y), {"train_loss": trained.mean_loss, **metrics})

    def dp_sgd(self, task: LocalTask) -> tuple[TrainOutcome, dict[str, float]]:
        """DP-SGD for ``local_epochs`` epochs of Poisson batches (expected size ``batch_size``)."""
        n = len(task.y)
        sample_rate = min(1.0, task.batch_size / n)
        steps = task.local_epochs * math.ceil(n / task.batch_size)
        sigma = self.dp.sigma(sample_rate, steps * self.rounds)
        generator = self.private_generator(task)
        batches = [(task.x[idx], task.y[idx]) for idx in poisson_batches(n, sample_rate, steps, generator)]
        gradient = dp_gradient(self.dp.clip, sigma, sample_rate * n, generator)
        trained = task.training(gradient=gradient).run(task.trainable(), batches)
        stored = task.client_state.get(DP_STEPS_KEY)
        taken = steps + (int(stored["steps"]) if stored else 0)
        task.client_state.put(DP_STEPS_KEY, {"steps": torch.tensor(taken)})
        epsilon = epsilon_spent(sigma, sample_rate, taken, self.dp.delta)
        return trained, {"dp_epsilon": epsilon, "dp_sigma": sigma, "dp_steps": float(taken)}

    def private_generator(self, task: LocalTask) -> torch.Generator:
        """Where DP-SGD's batch sampling and noise come from: the public task generator when
        ``dp.reproducible_noise``, else the client's secret seed for this round (fresh OS entropy if
        the server provisioned none)."""
        if self.dp.reproducible_noise:
            return task.generator
        seed = int(task.extra[NOISE_SEED_KEY]) if NOISE_SEED_KEY in task.extra else secrets.randbits(63)
        return torch_generator(seed, "dp-noise", task.round, device=str(task.generator.device))

class FFALoRA(LoRA):
    """FFA-LoRA (Sun, Li, Li, Ding, "Improving LoRA in Privacy-preserving Federated Learning",
    ICLR 2024): every adapter's A stays at its random non-zero initialisation, identical on all
    clients (drawn from the run seed and the layer name); clients train and upload only B and
    the head, half the adapter uplink. With A shared and fixed, mean(B_i)·A = mean(B_i·A):
    the server's average is the exact average of the clients' low-rank updates.
    """

    freeze_a = True
