"""One round's record in rounds.jsonl: what happened to every sampled client, bytes both ways,
and the harness's detection scores (roles and kinds come from the harness, never the wire)."""

from __future__ import annotations

from typing import Any

from fedsim.defense import Verdict
from fedsim.engine.detection import detection_scores
from fedsim.engine.harness import Truth
from fedsim.engine.replies import Collected, dense_upload_bytes


def round_record(
    server_round: int, sampled: list[int], got: Collected, verdict: Verdict, bytes_down: int,
    expected: dict[str, tuple[int, ...]], truth: Truth,
) -> dict[str, Any]:
    """The record of a round whose accepted updates ``got.updates`` were screened into ``verdict``."""
    losses = [(u.metrics["train_loss"], u.num_examples) for u in got.updates if "train_loss" in u.metrics]
    dense = dense_upload_bytes(expected)
    roles = [truth.roles[u.client_id] for u in got.updates]
    kinds = [truth.kinds[u.client_id] for u in got.updates]
    return {
        "round": server_round,
        "train_loss": sum(l * n for l, n in losses) / sum(n for _, n in losses) if losses else None,
        "clients_sampled": len(sampled),
        "clients_aggregated": sum(verdict.keep),
        "failures": got.failures,
        "rejected": got.rejected,
        "excluded": [u.client_id for u, keep in zip(got.updates, verdict.keep) if not keep],
        "bytes_up": sum(got.bytes_up.values()),
        "bytes_down": bytes_down,
        "clients": {
            str(u.client_id): {**u.metrics, "num_examples": u.num_examples, "bytes_up": got.bytes_up[u.client_id],
                               "compression_ratio": dense / max(got.bytes_up[u.client_id], 1), "role": r, "kind": k, "label": label}
            for u, r, k, label in zip(got.updates, roles, kinds, verdict.labels)
        },
        "detection": detection_scores(roles, kinds, verdict.labels),
    }
