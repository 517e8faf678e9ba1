"""One-byte SPSA: zeroth-order local steps whose only upload is one byte per step.

The perturbation of every step is regenerated from a seed derived from (run seed, round,
client id, step), so it is never sent; the server replays the client's steps from those
seeds and the bytes, and gets the client's model bit for bit.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.codec import Codec
from fedsim.seeding import derive_seed
from fedsim.state import ClientState, Tensors, to_record
from fedsim.strategy import LocalResult, LocalTask, cross_entropy

SEED_PURPOSE = "spsa-perturbation"
LEVELS = 127  # codes 1..127 per sign; code 0 is "below grad_min" (and g == 0)


def as_float32(value: float) -> float:
    """``value`` rounded to float32: what the header carries, so both ends compute with the same number."""
    return float(np.float32(value))


@dataclass(frozen=True)
class SpsaHeader:
    """The fixed 28-byte header of an SPSA message: who, when, how many steps, and the code's scale."""

    FORMAT = "<iiiffff"  # round, client id, steps, lr, eps, log2(grad_min), log2 step per code
    round: int
    client_id: int
    steps: int
    lr: float
    eps: float
    log2_min: float
    log2_step: float

    def pack(self) -> torch.Tensor:
        raw = struct.pack(self.FORMAT, self.round, self.client_id, self.steps, self.lr, self.eps, self.log2_min, self.log2_step)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)

    @classmethod
    def unpack(cls, array: np.ndarray) -> "SpsaHeader":
        if array.dtype != np.uint8 or array.size != struct.calcsize(cls.FORMAT):
            raise ValueError(f"SPSA header must be {struct.calcsize(cls.FORMAT)} uint8 bytes, got {array.size} {array.dtype}")
        return cls(*struct.unpack(cls.FORMAT, array.tobytes()))

    def quantize(self, grad: float) -> int:
        """One signed byte: 0 below grad_min (and for NaN), else sign x (1 + log-magnitude level), clipped at 127."""
        if math.isnan(grad) or abs(grad) < 2.0**self.log2_min:
            return 0
        level = LEVELS - 1 if math.isinf(grad) else round((math.log2(abs(grad)) - self.log2_min) / self.log2_step)
        return int(math.copysign(1 + min(max(level, 0), LEVELS - 1), grad))

    def dequantize(self, code: int) -> float:
        """The projected gradient a code stands for (both ends apply this value, not the float they measured)."""
        if code == 0:
            return 0.0
        return math.copysign(2.0 ** (self.log2_min + (abs(code) - 1) * self.log2_step), code)


def perturb(tensors: list[torch.Tensor], seed: int, scale: float) -> None:
    """In place, tensor by tensor: t += scale * z, with z ~ N(0, I) regenerated from ``seed`` (MeZO)."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in tensors:
        z = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        tensor.add_(z.to(tensor.device), alpha=scale)


def spsa_step(
    tensors: list[torch.Tensor], seed: int, header: SpsaHeader, *, loss: Callable[[], float] | None = None, code: int = 0
) -> int:
    """One MeZO step in place; returns its code. Every participant runs exactly these operations.

    The client passes ``loss`` (evaluated at theta + eps z and theta - eps z) and gets the code it
    measured; a participant replaying the step passes the received ``code`` instead.
    """
    perturb(tensors, seed, header.eps)
    loss_plus = loss() if loss else 0.0
    perturb(tensors, seed, -2 * header.eps)
    loss_minus = loss() if loss else 0.0
    perturb(tensors, seed, header.eps)
    if loss:
        code = header.quantize((loss_plus - loss_minus) / (2 * header.eps))
    perturb(tensors, seed, -header.lr * header.dequantize(code))
    return code


class OneByteSPSA(Codec):
    """One-byte SPSA with shared randomness (Zelikman et al., "Just One Byte (per gradient): A Note on
    Low-Bandwidth Decentralized Language Model Finetuning Using Shared Randomness", 2023), on MeZO's
    memory-efficient zeroth-order SGD (Malladi et al., "Fine-Tuning Language Models with Just Forward
    Passes", NeurIPS 2023).

    Each local step on a mini-batch: z from seed (run seed, round, client, step); in place
    theta += eps z -> loss+, theta -= 2 eps z -> loss-, theta += eps z; g = (loss+ - loss-) / (2 eps);
    g is quantized to one signed byte on a log scale over [grad_min, grad_max] (127 levels per sign,
    |g| < grad_min -> 0, |g| > grad_max clipped); theta -= lr * g_hat * z with the dequantized g_hat.
    The upload is a 28-byte header (round, client, steps, lr, eps, scale) plus one byte per step.
    """

    def __init__(self, seed: int, eps: float = 1e-3, grad_min: float = 1e-4, grad_max: float = 1e2) -> None:
        if not eps > 0:
            raise ValueError(f"compression.eps={eps}: must be > 0")
        if not grad_min > 0:
            raise ValueError(f"compression.grad_min={grad_min}: must be > 0")
        if not grad_max > grad_min:
            raise ValueError(f"compression.grad_max={grad_max}: must be > compression.grad_min={grad_min}")
        self.seed = int(seed)
        self.eps = eps
        self.log2_min = math.log2(grad_min)
        self.log2_step = (math.log2(grad_max) - self.log2_min) / (LEVELS - 1)

    def step_seed(self, server_round: int, client_id: int, step: int) -> int:
        """The seed of the perturbation of (round, client, step): the identifier both ends share."""
        return derive_seed(self.seed, SEED_PURPOSE, server_round, client_id, step)

    def local_update(self, task: LocalTask) -> LocalResult:
        params = dict(task.model.named_parameters())
        missing = [name for name in task.global_state if name not in params]
        if missing:
            raise ValueError(f"compression=spsa_one_byte perturbs parameters only; the model shares non-parameters {missing}")
        tensors = [params[name].data for name in sorted(task.global_state)]
        header = SpsaHeader(
            task.round, task.client_id, 0, as_float32(task.lr), as_float32(self.eps), as_float32(self.log2_min), as_float32(self.log2_step)
        )
        codes: list[int] = []
        losses: list[float] = []
        task.model.eval()
        with torch.no_grad():
            for step, (x, y) in enumerate(task.batches()):

                def loss(x: torch.Tensor = x, y: torch.Tensor = y) -> float:
                    losses.append(float(cross_entropy(task.model, x, y)))
                    return losses[-1]

                codes.append(spsa_step(tensors, self.step_seed(task.round, task.client_id, step), header, loss=loss))
        message = {"header": replace(header, steps=len(codes)).pack(), "codes": torch.tensor(codes, dtype=torch.int8)}
        return LocalResult(message, len(task.y), {"train_loss": sum(losses) / max(len(losses), 1), "spsa_steps": len(codes)})

    def encode(self, update: Tensors, client_state: ClientState, server_round: int) -> ArrayRecord:
        if set(update) != {"header", "codes"}:
            raise ValueError(f"compression=spsa_one_byte encodes its own local update, got arrays {sorted(update)}")
        return to_record(update)

    def rebuild(self, record: ArrayRecord, global_state: Tensors) -> Tensors:
        """The client's model after its steps, replayed from ``global_state``, the seeds and the bytes."""
        header = SpsaHeader.unpack(record["header"].numpy())
        codes = record["codes"].numpy()
        if codes.dtype != np.int8 or codes.shape != (header.steps,):
            raise ValueError(f"SPSA codes must be {header.steps} int8 bytes, got {codes.shape} {codes.dtype}")
        model = {name: tensor.detach().clone() for name, tensor in global_state.items()}
        tensors = [model[name] for name in sorted(model)]
        for step, code in enumerate(codes.tolist()):
            spsa_step(tensors, self.step_seed(header.round, header.client_id, step), header, code=code)
        return model

    def decode(self, record: ArrayRecord, global_state: Tensors) -> Tensors:
        model = self.rebuild(record, global_state)
        return {name: model[name] - global_state[name] for name in global_state}
