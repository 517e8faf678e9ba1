"""Finding which Flower node plays which client (the Ray engine starts its nodes lazily)."""

from __future__ import annotations

import time

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


def discover(grid: Grid, num_clients: int, timeout_s: float = 300.0) -> dict[int, int]:
    """Ask every node which client (partition) it plays: client id -> node id. Answering also warms the
    worker up (data loaded, components built), so that no client's round-1 deadline pays for it. A grid
    whose nodes are all one ClientApp of this process (the inline one) declares its map instead
    (``in_process_nodes``): one of them is asked, which warms the process up and checks the map."""
    known = getattr(grid, "in_process_nodes", None)
    if known is not None:  # every node is one ClientApp of this process: one query warms them all and checks the map
        node_of = known()
        ask_each(grid, [node_of[0]] if num_clients else [], expected=node_of)
        return node_of
    if hasattr(grid, "pull_interval"):
        grid.pull_interval = 0.005  # Flower's default 0.1 s poll dominates small rounds
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {num_clients} Flower nodes registered within {timeout_s:.0f} s")
        time.sleep(0.05)
    node_of = ask_each(grid, nodes)
    missing = sorted(set(range(num_clients)) - set(node_of))
    if missing:
        raise RuntimeError(f"no Flower node plays clients {missing}")
    return node_of


def ask_each(grid: Grid, nodes: list[int], expected: dict[int, int] | None = None) -> dict[int, int]:
    """Client id -> node id, as ``nodes`` answer the identify query (each answer checked against ``expected``)."""
    queries = [Message(RecordDict(), dst_node_id=n, message_type="query", group_id="discover") for n in nodes]
    node_of = {}
    for reply in grid.send_and_receive(queries):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to identify: {reply.error.reason}")
        client = int(reply.content["identity"]["partition_id"])
        if expected is not None and expected.get(client) != reply.metadata.src_node_id:
            raise RuntimeError(f"node {reply.metadata.src_node_id} plays client {client}, not the grid's node {expected.get(client)}")
        node_of[client] = reply.metadata.src_node_id
    return node_of
