"""Deep Gradient Compression: top-k sparsification with momentum correction, local clipping,
momentum factor masking and warm-up, and residuals that stay on the client across rounds."""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.codec import Codec
from fedsim.params import check_range
from fedsim.state import ClientState, Tensors, numpy_of, to_record
from fedsim.training import OptimizerConfig, clip_by_norm

INDICES, VALUES, SHAPE = ".__indices__", ".__values__", ".__shape__"


def warmup_densities(final_density: float, start: float, factor: float) -> list[float]:
    """Exponentially falling densities start, start*factor, ... while above ``final_density``."""
    densities, density = [], start
    while density > final_density:
        densities.append(density)
        density *= factor
    return densities


def encode_sparse(name: str, flat: torch.Tensor, indices: torch.Tensor, shape: tuple[int, ...]) -> Tensors:
    """The wire arrays of a sparse tensor: int32 indices, float32 values, int32 shape."""
    return {
        name + INDICES: indices.to(torch.int32),
        name + VALUES: flat[indices].float(),
        name + SHAPE: torch.tensor(shape, dtype=torch.int32),
    }


def decode_sparse(arrays: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """The dense tensor rebuilt from its sparse wire arrays."""
    shape = tuple(int(s) for s in arrays[name + SHAPE])
    dense = torch.zeros(math.prod(shape), dtype=torch.float32)
    dense[torch.from_numpy(arrays[name + INDICES].astype(np.int64))] = torch.from_numpy(arrays[name + VALUES])
    return dense.reshape(shape)


class DeepGradientCompression(Codec):
    """Deep Gradient Compression (Lin et al., "Deep Gradient Compression: Reducing the Communication
    Bandwidth for Distributed Training", ICLR 2018).

    Per client, per encoded update g (a one-step gradient update -lr*grad in FedSGD, or a round's
    model delta): optional local clipping of each tensor of g to L2 norm ``clip_norm / sqrt(workers)``
    (per tensor, as the reference synxlin/deep-gradient-compression clips in its memory); momentum correction
    u = m*u + g, v = v + u (without it: v = v + g); the top ``density`` fraction of |v| per tensor is
    sent as (int32 index, float32 value); v is zeroed where sent and, with momentum factor masking,
    so is u. Warm-up lowers the density exponentially (``warmup_start``, x``warmup_factor`` per stage)
    over the first ``warmup_rounds`` rounds. u and v live in the client state across rounds.
    Tensors with fewer than ``min_dims`` dimensions are sent dense (their momentum is plain momentum).
    """

    def __init__(
        self,
        sparsity: float = 0.999,
        momentum: float = 0.9,
        momentum_correction: bool = True,
        momentum_masking: bool = True,
        clip_norm: float | None = None,
        workers: int = 1,
        warmup_rounds: int = 0,
        warmup_start: float = 0.25,
        warmup_factor: float = 0.25,
        min_dims: int = 2,
    ) -> None:
        check_range("compression.sparsity", sparsity, 0, 1, high_open=True)
        check_range("compression.momentum", momentum, 0, 1, high_open=True)
        if clip_norm is not None:
            check_range("compression.clip_norm", clip_norm, low=0, low_open=True)
        check_range("compression.workers", workers, low=1, integer=True)
        check_range("compression.warmup_rounds", warmup_rounds, low=0, integer=True)
        check_range("compression.warmup_start", warmup_start, 0, 1, low_open=True)
        check_range("compression.warmup_factor", warmup_factor, 0, 1, low_open=True, high_open=True)
        check_range("compression.min_dims", min_dims, low=1, integer=True)
        self.density = 1.0 - sparsity
        self.momentum = momentum if momentum_correction else 0.0
        self.momentum_correction = momentum_correction
        self.momentum_masking = momentum_masking
        self.clip_norm = clip_norm
        self.workers = workers
        self.warmup_rounds = warmup_rounds
        self.warmup = warmup_densities(self.density, warmup_start, warmup_factor)
        self.min_dims = min_dims

    def density_at(self, server_round: int) -> float:
        """The density used in ``server_round`` (1-based): warm-up stages, then the final density."""
        if server_round > self.warmup_rounds or not self.warmup:
            return self.density
        return self.warmup[(server_round - 1) * len(self.warmup) // self.warmup_rounds]

    def encode(self, update: Tensors, client_state: ClientState, server_round: int) -> ArrayRecord:
        update = {k: t.detach().float() for k, t in update.items()}
        if self.clip_norm is not None:  # per tensor, as the reference's clip_grad_norm_ in DGCSGDMemory.compensate
            limit = self.clip_norm / math.sqrt(self.workers)
            update = {k: clip_by_norm({k: t}, limit)[k] for k, t in update.items()}
        velocity = client_state.get("dgc.momentum") or {k: torch.zeros_like(t) for k, t in update.items()}
        residual = client_state.get("dgc.residual") or {k: torch.zeros_like(t) for k, t in update.items()}
        density = self.density_at(server_round)
        wire: Tensors = {}
        for name, grad in update.items():
            u = self.momentum * velocity[name] + grad
            v = residual[name] + u
            if grad.dim() < self.min_dims or density >= 1:
                wire[name] = v
                v = torch.zeros_like(v)
            else:
                flat_v = v.flatten()
                k = max(1, round(density * flat_v.numel()))
                sent = torch.topk(flat_v.abs(), k, sorted=False).indices
                wire.update(encode_sparse(name, flat_v, sent, tuple(grad.shape)))
                flat_v = flat_v.clone()
                flat_v[sent] = 0
                v = flat_v.reshape(grad.shape)
                if self.momentum_masking:
                    u = u.flatten().index_fill(0, sent, 0).reshape(grad.shape)
            velocity[name], residual[name] = u, v
        client_state.put("dgc.momentum", velocity)
        client_state.put("dgc.residual", residual)
        return to_record(wire)

    def decode(self, record: ArrayRecord, global_state: Tensors, lr: float, optimizer: OptimizerConfig) -> Tensors:
        arrays = {k: numpy_of(a) for k, a in record.items()}
        decoded: Tensors = {}
        for key, array in arrays.items():
            if key.endswith(VALUES):
                name = key[: -len(VALUES)]
                decoded[name] = decode_sparse(arrays, name)
            elif not key.endswith((INDICES, SHAPE)):
                decoded[key] = torch.from_numpy(array)
        return decoded
