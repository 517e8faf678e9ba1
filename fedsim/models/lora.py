"""LoRA adapters (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022).

A wrapped linear layer computes ``W0 x + b + (alpha / r) B A x`` with the pretrained
``W0, b`` frozen, ``A`` (r x in) random and non-zero, ``B`` (out x r) zero, so a fresh
adapter leaves the backbone's output unchanged. ``A`` is drawn from a generator seeded by
(seed, layer name), so every process that builds the model holds the same ``A``: FFA-LoRA
(Sun et al., ICLR 2024) relies on that to keep ``A`` out of the exchanged state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedsim.seeding import torch_generator


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a rank-``rank`` update ``(alpha / rank) · B A``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank={rank}: must be an integer >= 1")
        if alpha <= 0:
            raise ValueError(f"alpha={alpha}: must be > 0")
        base.requires_grad_(False)
        self.base = base
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform(a=sqrt(5)), as in the LoRA reference code and peft
        a = torch.empty(rank, base.in_features).uniform_(-bound, bound, generator=generator)
        self.lora_A = nn.Parameter(a.to(base.weight.device, base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        """``W0 + (alpha / r) B A``: the dense weight this layer applies."""
        return self.base.weight + self.scaling * self.lora_B @ self.lora_A


def add_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float, seed: int) -> list[str]:
    """Wrap every ``nn.Linear`` of ``model`` whose name ends with one of ``targets``; return the wrapped names.

    ``A`` of the layer named ``name`` is drawn from ``torch_generator(seed, "lora-A/" + name)``.
    """
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, child, LoRALinear(module, rank, alpha, torch_generator(seed, f"lora-A/{name}")))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"lora targets {list(targets)} match no linear layer of {type(model).__name__}")
    return wrapped


def lora_a_names(model: nn.Module) -> set[str]:
    """Parameter names of every adapter's ``A`` in ``model``."""
    return {f"{name}.lora_A" for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_b_names(model: nn.Module) -> set[str]:
    """Parameter names of every adapter's ``B`` in ``model``."""
    return {f"{name}.lora_B" for name, m in model.named_modules() if isinstance(m, LoRALinear)}
