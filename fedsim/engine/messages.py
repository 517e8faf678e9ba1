"""The downlink: one train message per sampled client (docs/architecture.md, "One round").

A message holds the strategy's payload for the client (the shared global state unless the
strategy personalises it), the round's config, the strategy's per-client extras (FedSpeed's
h_i) and the client's persistent state, which the server hosts between rounds.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict

from fedsim.state import ArrayRecordMap, Tensors, record_nbytes, to_record
from fedsim.strategy import Strategy


def train_messages(
    strategy: Strategy,
    sampled: list[int],
    node_of: dict[int, int],
    round_config: dict[str, Any],
    global_state: Tensors,
    client_states: ArrayRecordMap,
) -> tuple[list[Message], int]:
    """Each sampled client's message and the downlink bytes (payloads and extras; hosted state is not counted)."""
    shared = to_record(global_state)
    messages, bytes_down = [], 0
    for cid in sampled:
        payload = strategy.payload_for(cid, global_state)
        content = {"arrays": shared if payload is global_state else to_record(payload), "config": ConfigRecord(round_config)}
        if extra := strategy.extra_for(cid):
            content["extra"] = to_record(extra)
        bytes_down += sum(record_nbytes(content[k]) for k in ("arrays", "extra") if k in content)
        messages.append(Message(RecordDict({**content, **client_states.get(cid, {})}), dst_node_id=node_of[cid],
                                message_type="train", group_id=str(round_config["round"])))
    return messages, bytes_down
