"""Finding which Flower node plays which client (the Ray engine starts its nodes lazily)."""

from __future__ import annotations

import time

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


def discover(grid: Grid, num_clients: int, timeout_s: float = 300.0) -> dict[int, int]:
    """Ask every node which client (partition) it plays: client id -> node id. Answering also warms the
    worker up (data loaded, components built), so that no client's round-1 deadline pays for it."""
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = 0.005  # Flower's default 0.1 s poll dominates small rounds
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_clients} Flower nodes registered within {timeout_s:.0f} s")
        time.sleep(0.05)
    queries = [Message(RecordDict(), dst_node_id=n, message_type="query", group_id="discover") for n in nodes]
    node_of = {}
    for reply in grid.send_and_receive(queries):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to identify: {reply.error.reason}")
        node_of[int(reply.content["identity"]["partition_id"])] = reply.metadata.src_node_id
    missing = sorted(set(range(num_clients)) - set(node_of))
    if missing:
        raise RuntimeError(f"no Flower node plays clients {missing}")
    return node_of
