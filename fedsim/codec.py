"""The codec part: the last client-side update transform and its server-side inverse.

``encode`` turns the (poisoned, clipped) update into the arrays that go on the wire and
``decode`` inverts it on the server (docs/architecture.md, "Update transforms"). A codec may
keep per-client residuals in the client state (DGC). A codec whose message is not a
compressed update but a trace of the training itself (zeroth-order SPSA: one byte per
step) supplies the gradient estimator of the one training loop through
:meth:`Codec.gradient_estimator`, records what it needs while the loop runs, and encodes
that record; it never trains the model itself. The base class is ``compression=none``.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedsim.component import Component
from fedsim.state import ClientState, Tensors, from_record, record_nbytes, to_record
from fedsim.training import GradientFn, OptimizerConfig


class Codec(Component):
    """Identity codec: the update is sent as its dense arrays, each in its own dtype (the server
    checks it against the dtype the strategy expects: the model's, or a strategy's own wire format)."""

    def gradient_estimator(self, server_round: int, client_id: int) -> GradientFn | None:
        """Client side, before training: this codec's gradient estimator, or None (autograd)."""
        return None

    def encode(self, update: Tensors, client_state: ClientState, server_round: int) -> ArrayRecord:
        """Client side: the update as the arrays that go on the wire."""
        return to_record(update)

    def decode(self, record: ArrayRecord, global_state: Tensors, lr: float, optimizer: OptimizerConfig) -> Tensors:
        """Server side: the update back from the wire arrays.

        ``global_state`` is the model the client started the round from; ``lr`` and ``optimizer``
        are the public training settings it used (codecs that replay the client's steps need
        them); the dense codec ignores them.
        """
        return from_record(record)

    def wire_bytes(self, record: ArrayRecord) -> int:
        """Bytes the encoded update occupies on a real wire: array payloads, no headers."""
        return record_nbytes(record)
