"""Collecting one round's replies: decode, validate, refuse (docs/architecture.md, "Server side").

A reply is checked against what the simulator itself knows, never against what the client
claims about itself: the upload's array names, shapes, dtypes and finiteness, an optional
norm bound, and the claimed example count against the client's true partition size. The
upload's size on the wire is measured here, not taken from the client. Refusals are logged
and recorded with their reason; a refused reply is never aggregated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import Message

from fedsim.codec import Codec
from fedsim.engine.context import RunContext
from fedsim.state import ArrayRecordMap, Tensors, drop_hosted_state, state_entries
from fedsim.strategy import ClientUpdate
from fedsim.training import OptimizerConfig
from fedsim.validation import metrics_problem, state_problem, update_problem

log = logging.getLogger("fedsim")


class TooFewClients(RuntimeError):
    """Fewer than ``min_clients`` valid replies in a round: the run cannot go on meaningfully."""


@dataclass
class Collected:
    """One round's replies, sorted into accepted updates and refusals."""

    updates: list[ClientUpdate] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    bytes_up: dict[int, int] = field(default_factory=dict)  # measured wire bytes of each reply's update

    def fail(self, server_round: int, client_id: int, reason: str) -> None:
        log.warning("round %d: client %d failed: %s", server_round, client_id, reason)
        self.failures.append({"client": client_id, "reason": reason})

    def reject(self, server_round: int, client_id: int, reason: str) -> None:
        log.warning("round %d: rejected client %d: %s", server_round, client_id, reason)
        self.rejected.append({"client": client_id, "reason": reason})


def dense_upload_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes of an upload of these shapes sent uncompressed as float32: the reference for the compression ratio."""
    return sum(4 * math.prod(shape) for shape in shapes.values())


def collect(
    ctx: RunContext,
    codec: Codec,
    server_round: int,
    replies: list[tuple[int, Message]],
    global_state: Tensors,
    expected: dict[str, tuple[int, ...]],
    lr: float,
    optimizer: OptimizerConfig,
    client_states: ArrayRecordMap,
    dtypes: dict[str, torch.dtype],
) -> Collected:
    """Decode and validate ``(client id, reply)`` pairs in client order; hosted client states are updated in place.
    ``dtypes``: each uploaded array's required dtype (:meth:`Strategy.upload_dtypes`)."""
    got = Collected()
    max_norm = ctx.cfg.get("max_update_norm")
    max_state_mb = float(ctx.cfg["max_client_state_mb"])
    for cid, reply in sorted(replies, key=lambda pair: pair[0]):
        if reply.has_error():
            got.fail(server_round, cid, reply.error.reason)
            continue  # a failed round leaves the client's state as it was
        try:  # every field of the reply is parsed here: a malformed one refuses the reply, never stops the round
            metrics = dict(reply.content["metrics"])
            num_examples = metrics.pop("num_examples", None)
            record = reply.content["update"]
            got.bytes_up[cid] = codec.wire_bytes(record)
            update = codec.decode(record, global_state, lr, optimizer)
            state = state_entries(reply.content)
        except Exception as exc:
            problem = f"undecodable reply: {type(exc).__name__}: {exc}"
        else:
            problem = (update_problem(update, expected, max_norm, dtypes) or count_problem(num_examples, ctx.partition_size(cid))
                       or metrics_problem(metrics) or state_problem(state, max_state_mb))
        if problem is not None:
            got.reject(server_round, cid, problem)
            continue  # as for a failure: the client's hosted state stays as it was
        client_states[cid] = state
        drop_hosted_state(reply)  # the store holds it now (and may spill it): the reply's reference would keep it in memory
        got.updates.append(ClientUpdate(cid, update, int(num_examples), {k: float(v) for k, v in metrics.items()}))
    return got


def count_problem(claimed: Any, true_size: int) -> str | None:
    """Why a claimed example count is refused: not a positive integer, or above the client's true partition."""
    if isinstance(claimed, bool) or not isinstance(claimed, (int, float)) or not math.isfinite(claimed) or claimed != int(claimed) or claimed <= 0:
        return f"num_examples={claimed} is not a positive integer"
    if claimed > true_size:
        return f"num_examples={int(claimed)} exceeds the client's partition of {true_size} examples"
    return None


def require_enough(server_round: int, got: Collected, sampled: int, min_clients: int) -> None:
    """Raise :class:`TooFewClients` when fewer than ``min_clients`` of the ``sampled`` clients sent a valid update."""
    if len(got.updates) < min_clients:
        def summary(entries: list[dict[str, Any]]) -> str:  # first line of each reason: no tracebacks in the error line
            return ", ".join(f"client {e['client']}: {str(e['reason']).strip().splitlines()[0]}" for e in entries) or "none"

        raise TooFewClients(f"round {server_round}: only {len(got.updates)} of {sampled} sampled clients sent a valid update "
                            f"(min_clients={min_clients}); failures: {summary(got.failures)}; rejected: {summary(got.rejected)}")
