"""A round's train messages once sent, and how its replies are received (docs/architecture.md, "One round").

The loop sends round r+1's messages as soon as round r's global state is made, before round r's
callbacks (central evaluation, privacy observers, results, checkpoints). A Grid that can start
messages and collect them later (``post``: fedsim's Ray actors) trains round r+1's clients while the
server evaluates round r; any other Grid delivers them when the loop asks for the replies. Either way
the server calls the strategy in the same order, so every transport computes the same run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from flwr.app import Message
from flwr.serverapp import Grid


class Posted(Protocol):
    def receive(self) -> list[Message]: ...

    def cancel(self) -> None: ...


@runtime_checkable
class Posting(Protocol):
    """A Grid that can start messages now and hand their replies over later."""

    def post(self, messages: Iterable[Message], *, timeout: float | None = None) -> Posted: ...


@dataclass
class Outbound:
    """One round's sampled clients, config and downlink bytes, and its messages: started (``posted``) or
    waiting to be delivered by ``send_and_receive`` when :meth:`receive` is called."""

    round: int
    sampled: list[int]
    round_config: dict[str, Any]
    bytes_down: int
    grid: Grid
    messages: list[Message]
    timeout: float | None
    posted: Posted | None = None

    @classmethod
    def send(cls, grid: Grid, server_round: int, sampled: list[int], round_config: dict[str, Any], messages: list[Message],
             bytes_down: int, timeout: float | None) -> Outbound:
        out = cls(server_round, sampled, round_config, bytes_down, grid, messages, timeout)
        if isinstance(grid, Posting):
            out.posted = grid.post(messages, timeout=timeout)
        return out

    def receive(self) -> list[Message]:
        """The replies (each message's at most once); a client not heard within the timeout is missing."""
        if self.posted is not None:
            replies = self.posted.receive()  # on an error it stays posted: cancel() then drains what is still running
            self.posted = None
            return replies
        messages, self.messages = self.messages, []
        return list(self.grid.send_and_receive(messages, timeout=self.timeout))

    def cancel(self) -> None:
        """The run stopped before receiving: work already started is finished and dropped, the rest never starts."""
        if self.posted is not None:
            posted, self.posted = self.posted, None
            posted.cancel()
        self.messages = []
