"""The coordinator's grid: replies noticed promptly, and no endless wait on a dead engine.

Flower 1.42's grids make the coordinator wait in two ways fedmed cannot accept:

- Deployed, ``HttpGrid`` pushes the messages and then pulls the replies with 3 s sleeps
  in between, so every exchange ends up to 3 s after its last reply — paid twice per
  plain round (train, evaluate) and five times with SecAgg+ (four stages, evaluate).
  Each pull is one request to the SuperLink on the coordinator's own machine, cheap next
  to a round, so this pulls after 50 ms and backs off (×1.5) to one pull every 0.2 s.
- Embedded in ``fedmed run``, the in-memory grid polls until every node answered and
  the legacy workflow sets no timeout. If the Ray backend dies (measured here: a Ray
  socket path over Linux's 107-byte limit), no reply ever comes: ``run_simulation``
  raises in the caller, but the ServerApp thread keeps polling and, as a non-daemon
  thread, keeps the process alive — ``fedmed run`` would hang instead of failing. Given
  the caller's ``aborted`` event, this gives up once it is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.common import Message
from flwr.server import Grid

FIRST_POLL_SECONDS = 0.05
POLL_BACKOFF = 1.5
MAX_POLL_SECONDS = 0.2  # deployed: a pull is a request to the SuperLink
MAX_SIMULATION_POLL_SECONDS = 0.1  # embedded: rounds of a few tenths of a second


class SimulationAborted(RuntimeError):
    """The Simulation Engine's backend failed while the coordinator waited for replies."""


class PollingGrid:
    """``grid`` with Flower's ``send_and_receive`` contract, polled as the module says."""

    def __init__(self, grid: Grid, aborted: threading.Event | None = None) -> None:
        self._grid = grid
        self._aborted = aborted
        self._max_pause = MAX_SIMULATION_POLL_SECONDS if aborted else MAX_POLL_SECONDS

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then collect replies until all came, ``timeout`` passed or the engine died."""
        pending = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        pause = FIRST_POLL_SECONDS
        while pending:
            if self._aborted is not None and self._aborted.is_set():
                raise SimulationAborted("the simulation backend stopped; no replies will come")
            received = list(self._grid.pull_messages(pending))
            replies.extend(received)
            pending -= {reply.metadata.reply_to_message_id for reply in received}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(pause)
            pause = min(pause * POLL_BACKOFF, self._max_pause)
        return replies
