"""Named tensors and the per-client state that outlives a round."""

from __future__ import annotations

import math
from collections.abc import MutableMapping

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, RecordDict

from fedsim.wire import from_record as from_record, numpy_of as numpy_of, to_record  # re-exported: the state's wire format

Tensors = dict[str, torch.Tensor]


def record_nbytes(record: ArrayRecord) -> int:
    """Payload bytes of the arrays in ``record`` (shape x item size; serialisation headers excluded)."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in record.values())


def tensors_nbytes(tensors: Tensors) -> int:
    """Payload bytes of ``tensors`` (element count x item size), as :func:`record_nbytes` counts a record."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


STATE_PREFIX = "state."  # message entries carrying a client's persistent state


def state_entries(content: RecordDict) -> dict[str, ArrayRecord]:
    """The client-state entries of a message's content."""
    return {k: v for k, v in content.items() if k.startswith(STATE_PREFIX) and isinstance(v, ArrayRecord)}


def drop_hosted_state(message: Message) -> None:
    """Free a message's copy of the client's hosted state once the server's store holds it (a delivered
    message, an accepted reply), so a round of a large cohort does not hold every sampled client's state twice."""
    for key in state_entries(message.content):
        del message.content[key]


class ClientState:
    """A client's persistent tensors (residuals, corrections, momenta, private layers).

    The server hosts every client's state and ships it with the client's message, and
    the client returns it with its reply (entries ``state.<key>``); so the state
    survives a Ray worker's death, is saved in checkpoints, and a failing client's
    round leaves it unchanged. None of it counts as protocol bytes.
    """

    def __init__(self, records: MutableMapping[str, ArrayRecord] | None = None, device: str = "cpu") -> None:
        self._records = records if records is not None else {}
        self._device = device

    def entries(self) -> dict[str, ArrayRecord]:
        """The state as message entries."""
        return dict(self._records)

    def get(self, key: str) -> Tensors | None:
        """The tensors stored under ``key``, or None if never stored."""
        record = self._records.get(STATE_PREFIX + key)
        return None if record is None else from_record(record, self._device)

    def put(self, key: str, tensors: Tensors) -> None:
        """Store ``tensors`` under ``key`` (replacing what was there)."""
        self._records[STATE_PREFIX + key] = to_record(tensors)


ArrayRecordMap = dict[int, dict[str, ArrayRecord]]  # client id -> its hosted state entries


def stack_flat(updates: list[Tensors]) -> tuple[torch.Tensor, list[str], Tensors]:
    """Updates as the rows of one float matrix (tensors in the first update's key order), the key order,
    and a template of shapes and dtypes for :func:`unflatten`."""
    names = list(updates[0])
    return torch.stack([torch.cat([u[n].flatten().float() for n in names]) for u in updates]), names, updates[0]


def unflatten(vector: torch.Tensor, names: list[str], like: Tensors) -> Tensors:
    """A flat vector split back into tensors shaped and typed like ``like`` (in ``names`` order)."""
    out, start = {}, 0
    for name in names:
        ref = like[name]
        out[name] = vector[start : start + ref.numel()].view(ref.shape).to(ref.dtype).clone()
        start += ref.numel()
    return out
