"""One-byte SPSA: zeroth-order local steps whose only upload is one byte per step.

The codec supplies the one training loop's gradient estimator: per step, the perturbation z
is regenerated from a seed derived from (run seed, round, client id, step), so it is never
sent; the projected gradient (loss(theta + eps z) - loss(theta - eps z)) / (2 eps) is quantised
to one byte, and the step direction is the dequantised value times z. The server replays the
client's steps from the seeds and the bytes with the same optimizer step, and gets the
client's model bit for bit.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.codec import Codec
from fedsim.params import check_range, check_that
from fedsim.seeding import derive_seed
from fedsim.state import ClientState, Tensors, numpy_of, to_record
from fedsim.training import Batch, GradientFn, LossFn, Optimizer, OptimizerConfig, Params, clip_by_norm

SEED_PURPOSE = "spsa-perturbation"
LEVELS = 127  # codes 1..127 per sign; code 0 is "below grad_min" (and g == 0)


def as_float32(value: float) -> float:
    """``value`` rounded to float32: what the header carries, so both ends compute with the same number."""
    return float(np.float32(value))


@dataclass(frozen=True)
class LogByteCode:
    """One signed byte per projected gradient: 0 below ``2**log2_min`` (and for NaN), else sign x
    (1 + log-magnitude level), 127 log-spaced levels per sign up to the clipping bound."""

    log2_min: float
    log2_step: float

    @classmethod
    def spanning(cls, grad_min: float, grad_max: float) -> "LogByteCode":
        """The code over [grad_min, grad_max], its two numbers rounded to float32 (as a header carries them)."""
        log2_min = math.log2(grad_min)
        return cls(as_float32(log2_min), as_float32((math.log2(grad_max) - log2_min) / (LEVELS - 1)))

    def quantize(self, grad: float) -> int:
        if math.isnan(grad) or abs(grad) < 2.0**self.log2_min:
            return 0
        level = LEVELS - 1 if math.isinf(grad) else round((math.log2(abs(grad)) - self.log2_min) / self.log2_step)
        return int(math.copysign(1 + min(max(level, 0), LEVELS - 1), grad))

    def dequantize(self, code: int) -> float:
        """The projected gradient a code stands for (both ends apply this value, not the float they measured)."""
        if code == 0:
            return 0.0
        return math.copysign(2.0 ** (self.log2_min + (abs(code) - 1) * self.log2_step), code)


@dataclass(frozen=True)
class SpsaHeader:
    """The fixed 24-byte header of an SPSA message: who, when, how many steps, and the code's scale."""

    FORMAT = "<iiifff"  # round, client id, steps, eps, log2(grad_min), log2 step per code
    round: int
    client_id: int
    steps: int
    eps: float
    log2_min: float
    log2_step: float

    def pack(self) -> torch.Tensor:
        raw = struct.pack(self.FORMAT, self.round, self.client_id, self.steps, self.eps, self.log2_min, self.log2_step)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8)

    @classmethod
    def unpack(cls, array: np.ndarray) -> "SpsaHeader":
        if array.dtype != np.uint8 or array.size != struct.calcsize(cls.FORMAT):
            raise ValueError(f"SPSA header must be {struct.calcsize(cls.FORMAT)} uint8 bytes, got {array.size} {array.dtype}")
        return cls(*struct.unpack(cls.FORMAT, array.tobytes()))

    @property
    def code(self) -> LogByteCode:
        return LogByteCode(self.log2_min, self.log2_step)


def direction(params: Params, seed: int) -> Params:
    """z ~ N(0, I) for every tensor of ``params``, regenerated from ``seed`` in sorted name order (MeZO)."""
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(params[n].shape, generator=generator, dtype=params[n].dtype).to(params[n].device) for n in sorted(params)}


def projected_gradient(loss_fn: LossFn, params: Params, batch: Batch, z: Params, eps: float) -> tuple[float, float]:
    """(mean of the two losses, (loss(theta + eps z) - loss(theta - eps z)) / (2 eps)); theta is not modified."""
    with torch.no_grad():
        loss_plus = float(loss_fn({n: p + eps * z[n] for n, p in params.items()}, *batch))
        loss_minus = float(loss_fn({n: p - eps * z[n] for n, p in params.items()}, *batch))
    return (loss_plus + loss_minus) / 2, (loss_plus - loss_minus) / (2 * eps)


@dataclass
class SpsaEstimator:
    """The loop's gradient estimator for one client's round; ``codes`` records the byte of every step."""

    codec: "OneByteSPSA"
    header: SpsaHeader
    codes: list[int] = field(default_factory=list)

    def __call__(self, loss_fn: LossFn, params: Params, batch: Batch) -> tuple[float, Params]:
        z = direction(params, self.codec.step_seed(self.header.round, self.header.client_id, len(self.codes)))
        loss, grad = projected_gradient(loss_fn, params, batch, z, self.header.eps)
        code = self.header.code.quantize(grad)
        self.codes.append(code)
        return loss, scaled(z, self.header.code.dequantize(code))


def scaled(z: Params, g: float) -> Params:
    """The step direction of a projected gradient ``g`` along ``z``."""
    return {n: t * g for n, t in z.items()}


class OneByteSPSA(Codec):
    """One-byte SPSA with shared randomness (Zelikman et al., "Just One Byte (per gradient): A Note on
    Low-Bandwidth Decentralized Language Model Finetuning Using Shared Randomness", 2023), on MeZO's
    memory-efficient zeroth-order SGD (Malladi et al., "Fine-Tuning Language Models with Just Forward
    Passes", NeurIPS 2023).

    Each local step on a mini-batch: z from seed (run seed, round, client, step); loss+ at theta + eps z
    and loss- at theta - eps z (theta itself is never modified, so no rounding drift);
    g = (loss+ - loss-) / (2 eps), quantised to one signed byte on a log scale over [grad_min, grad_max]
    (127 levels per sign, |g| < grad_min -> 0, |g| > grad_max clipped); the loop's optimizer steps
    along g_hat·z with the dequantised g_hat. The upload is a 24-byte header (round, client, steps,
    eps, scale) plus one byte per step. The strategy must add no gradient hooks (FedAvg, FedProx):
    the server's replay applies only the optimizer (and its clipping).
    """

    def __init__(self, seed: int, eps: float = 1e-3, grad_min: float = 1e-4, grad_max: float = 1e2) -> None:
        check_range("compression.eps", eps, low=0, low_open=True)
        check_range("compression.grad_min", grad_min, low=0, low_open=True)
        check_that("compression.grad_max", grad_max, grad_max > grad_min, f"> compression.grad_min={grad_min}")
        self.seed = int(seed)
        self.eps = eps
        self.code = LogByteCode.spanning(grad_min, grad_max)
        self.estimator: SpsaEstimator | None = None  # client side, one message's

    def step_seed(self, server_round: int, client_id: int, step: int) -> int:
        """The seed of the perturbation of (round, client, step): the identifier both ends share."""
        return derive_seed(self.seed, SEED_PURPOSE, server_round, client_id, step)

    def gradient_estimator(self, server_round: int, client_id: int) -> GradientFn:
        header = SpsaHeader(server_round, client_id, 0, as_float32(self.eps), self.code.log2_min, self.code.log2_step)
        self.estimator = SpsaEstimator(self, header)
        return self.estimator

    def encode(self, update: Tensors, client_state: ClientState, server_round: int) -> ArrayRecord:
        if self.estimator is None:
            raise RuntimeError("compression=spsa_one_byte: encode without a training round")
        codes = self.estimator.codes
        header = SpsaHeader(**{**self.estimator.header.__dict__, "steps": len(codes)})
        return to_record({"header": header.pack(), "codes": torch.tensor(codes, dtype=torch.int8)})

    def rebuild(self, record: ArrayRecord, global_state: Tensors, lr: float, optimizer: OptimizerConfig) -> Tensors:
        """The client's model after its steps, replayed from ``global_state``, the seeds and the bytes."""
        header = SpsaHeader.unpack(numpy_of(record["header"]))
        codes = numpy_of(record["codes"])
        if codes.dtype != np.int8 or codes.shape != (header.steps,):
            raise ValueError(f"SPSA codes must be {header.steps} int8 bytes, got {codes.shape} {codes.dtype}")
        params = {name: tensor.detach().clone() for name, tensor in global_state.items()}
        step, state = Optimizer(optimizer), {}
        for index, code in enumerate(codes.tolist()):
            grads = scaled(direction(params, self.step_seed(header.round, header.client_id, index)), header.code.dequantize(code))
            if optimizer.grad_clip is not None:
                grads = clip_by_norm(grads, optimizer.grad_clip)
            params, state = step.step(params, grads, state, lr)
        return params

    def decode(self, record: ArrayRecord, global_state: Tensors, lr: float, optimizer: OptimizerConfig) -> Tensors:
        model = self.rebuild(record, global_state, lr, optimizer)
        return {name: model[name] - global_state[name] for name in global_state}
