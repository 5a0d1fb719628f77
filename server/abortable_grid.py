"""A simulation grid that stops waiting when the Simulation Engine's backend has died.

Flower 1.42's in-memory grid polls for replies until every node answered or a timeout
passes, and the legacy workflow waits without a timeout. If the Ray backend fails
(measured here: a Ray socket path over Linux's 107-byte limit), no reply ever comes:
``run_simulation`` raises in the caller, but the ServerApp thread keeps polling and, as
a non-daemon thread, keeps the process from exiting — ``fedmed run`` would hang instead
of failing. This wrapper polls the same way and gives up once ``aborted`` is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.common import Message
from flwr.server import Grid

POLL_SECONDS = 0.1


class SimulationAborted(RuntimeError):
    """The Simulation Engine's backend failed while the coordinator waited for replies."""


class AbortableGrid:
    """``grid`` with a ``send_and_receive`` that ends when ``aborted`` is set."""

    def __init__(self, grid: Grid, aborted: threading.Event) -> None:
        self._grid = grid
        self._aborted = aborted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending and (deadline is None or time.monotonic() < deadline):
            if self._aborted.is_set():
                raise SimulationAborted("the simulation backend stopped; no replies will come")
            received = list(self._grid.pull_messages(pending))
            replies.extend(received)
            pending -= {reply.metadata.reply_to_message_id for reply in received}
            if pending:
                time.sleep(POLL_SECONDS)
        return replies
