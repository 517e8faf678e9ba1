"""An in-process Flower Grid: delivers each message straight to the ClientApp (no Ray).

The same ServerApp logic and ClientApp run unchanged; only transport differs.
Each node keeps its own ``Context`` for the run, as Flower's simulation engine does
(fedsim hosts client state on the server, so it does not rely on ``Context.state``).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.run import Run
from flwr.serverapp import Grid

from fedsim.state import drop_hosted_state



class SimulatedGrid(Grid):
    """What every simulated Grid shares: ``num_nodes`` nodes (node ``1001 + i`` plays partition ``i``) of one run."""

    def __init__(self, num_nodes: int, run: Run) -> None:
        self._run = run
        self._contexts = node_contexts(run, num_nodes)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)


class InlineGrid(SimulatedGrid):
    """A Grid whose nodes are ``num_nodes`` ClientApp instances called in this process."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run: Run, cohort: Cohort | None = None) -> None:
        super().__init__(num_nodes, run)
        self._client_app = client_app
        self._cohort = cohort  # runs a round's train messages together (backend.vectorize)
        self._replies: dict[str, tuple[Message, float]] = {}  # message id -> (reply, seconds the client took)

    def in_process_nodes(self) -> dict[int, int]:
        """Client id -> node id (node ``1001 + i`` plays client ``i``): every node is this process's ClientApp."""
        return {int(c.node_config["partition-id"]): node for node, c in self._contexts.items()}

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
        items = [(m, self._contexts[m.metadata.dst_node_id]) for m in messages]
        for message, timed in zip(messages, timed_replies(self._client_app, self._cohort, items)):
            self._replies[message.metadata.message_id] = timed
            drop_hosted_state(message)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i)[0] for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver each message in turn; a client that took longer than ``timeout`` seconds is not heard.

        Clients run one after another here, so the timeout applies to each client
        (on Ray, where clients run in parallel, Flower applies it to the round).
        """
        ids = list(self.push_messages(messages))
        late = {i for i in ids if timeout is not None and self._replies[i][1] > timeout}
        for i in late:
            del self._replies[i]
        return self.pull_messages(ids)



Cohort = Callable[[list[tuple[Message, Context]]], list[Message]]  # replies to (message, node context) pairs, in order


def timed_replies(client_app: ClientApp, cohort: Cohort | None, items: list[tuple[Message, Context]]) -> Iterator[tuple[Message, float]]:
    """(reply, seconds the client took) for each ``(message, context)``, in order: a chunk of train messages as one
    vectorised cohort when ``cohort`` is set (each client takes its share of the time), else one by one."""
    if cohort is not None and items and all(m.metadata.message_type == "train" for m, _ in items):
        started = time.perf_counter()
        replies = cohort(items)
        share = (time.perf_counter() - started) / len(items)
        yield from ((r, share) for r in replies)
        return
    for message, context in items:
        started = time.perf_counter()
        reply = deliver(client_app, message, context)
        yield reply, time.perf_counter() - started


def node_contexts(run: Run, num_nodes: int) -> dict[int, Context]:
    """Node id -> the node's Context for the run (node ``1001 + i`` plays partition ``i``)."""
    return {
        node_id: Context(run_id=run.run_id, node_id=node_id, node_config={"partition-id": pid, "num-partitions": num_nodes},
                         state=RecordDict(), run_config={})
        for pid, node_id in enumerate(range(1001, 1001 + num_nodes))
    }


def deliver(client_app: ClientApp, message: Message, context: Context) -> Message:
    """The ClientApp's reply to ``message``; a client that raises gives an error reply, as in Flower's engine."""
    try:
        return client_app(message, context)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
