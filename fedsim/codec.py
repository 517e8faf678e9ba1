"""The compression hook: how a client's update travels on the wire.

The base class is the ``compression=none`` component: dense float32 arrays.
Concrete codecs (DGC, one-byte SPSA) override encode/decode and may keep
per-client residuals in the client state. A codec whose message is not a
compressed version of an ordinary update (zeroth-order methods that send
projected gradients) takes over the client's local training through
:meth:`Codec.local_update`.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedsim.persistent import Persistent
from fedsim.state import ClientState, Tensors, from_record, record_nbytes, to_record
from fedsim.strategy import LocalResult, LocalTask


class Codec(Persistent):
    """Identity codec: the update is sent as dense float32 arrays."""

    def local_update(self, task: LocalTask) -> LocalResult | None:
        """Client side, before the strategy: the local update if this codec trains the model itself.

        The default (None) leaves local training to the strategy.
        """
        return None

    def encode(self, update: Tensors, client_state: ClientState, server_round: int) -> ArrayRecord:
        """Client side: the update as the arrays that go on the wire."""
        return to_record({k: v.float() for k, v in update.items()})

    def decode(self, record: ArrayRecord, global_state: Tensors) -> Tensors:
        """Server side: the update back from the wire arrays.

        ``global_state`` is the model the client started the round from (codecs that
        replay the client's steps need it); the dense codec ignores it.
        """
        return from_record(record)

    def wire_bytes(self, record: ArrayRecord) -> int:
        """Bytes the encoded update occupies on a real wire: array payloads, no headers."""
        return record_nbytes(record)
