"""Named tensors and the per-client state that outlives a round."""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict

Tensors = dict[str, torch.Tensor]


def to_record(tensors: Tensors) -> ArrayRecord:
    """Tensors -> a Flower ArrayRecord (copied to CPU)."""
    return ArrayRecord(torch_state_dict={k: v.detach().cpu() for k, v in tensors.items()})


def from_record(record: ArrayRecord, device: str = "cpu") -> Tensors:
    """A Flower ArrayRecord -> tensors on ``device``."""
    return {k: v.to(device) for k, v in record.to_torch_state_dict().items()}


def record_nbytes(record: ArrayRecord) -> int:
    """Payload bytes of the arrays in ``record`` (shape x item size; serialisation headers excluded)."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in record.values())


class ClientState:
    """A client's persistent tensors, stored in its Flower ``Context.state``.

    Flower keeps ``Context.state`` per node across rounds (also when the node is not
    sampled), so strategies and codecs keep residuals, corrections and momenta here.
    """

    _PREFIX = "fedsim."

    def __init__(self, record_dict: RecordDict, device: str = "cpu") -> None:
        self._records = record_dict
        self._device = device

    def get(self, key: str) -> Tensors | None:
        """The tensors stored under ``key``, or None if never stored."""
        record = self._records.get(self._PREFIX + key)
        return None if record is None else from_record(record, self._device)

    def put(self, key: str, tensors: Tensors) -> None:
        """Store ``tensors`` under ``key`` (replacing what was there)."""
        self._records[self._PREFIX + key] = to_record(tensors)
