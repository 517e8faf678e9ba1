"""The compression hook: how a client's update travels on the wire.

The base class is the ``compression=none`` component: dense float32 arrays.
Concrete codecs (DGC, one-byte SPSA) override encode/decode and may keep
per-client residuals in the client state.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedsim.state import ClientState, Tensors, from_record, record_nbytes, to_record


class Codec:
    """Identity codec: the update is sent as dense float32 arrays."""

    def encode(self, update: Tensors, client_state: ClientState, server_round: int) -> ArrayRecord:
        """Client side: the update as the arrays that go on the wire."""
        return to_record({k: v.float() for k, v in update.items()})

    def decode(self, record: ArrayRecord) -> Tensors:
        """Server side: the update back from the wire arrays."""
        return from_record(record)

    def wire_bytes(self, record: ArrayRecord) -> int:
        """Bytes the encoded update occupies on a real wire: array payloads, no headers."""
        return record_nbytes(record)
