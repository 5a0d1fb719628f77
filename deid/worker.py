"""One de-identification worker process: ``python -m fedmed.deid.worker``.

Started by :class:`fedmed.deid.workers.WorkerPool` (which says why processes); it builds
its own :class:`fedmed.deid.presidio_engine.Detector` from the settings it is sent and
answers batches of texts with their spans on a pipe.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import IO, Any

from fedmed.deid.presidio_engine import Detector, release_freed_memory
from fedmed.deid.workers import READY, WorkerError, send


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Worker loop: settings, then batches of texts until ``None`` or end of input;
    reply with the spans of each batch."""
    config = pickle.load(requests)
    try:
        detector = Detector(config)
    except Exception as e:  # noqa: BLE001 -- reported to the parent, which decides
        send(replies, WorkerError(f"de-id worker could not build its detector: {e!r}"))
        return
    send(replies, READY)
    while True:
        try:
            texts = pickle.load(requests)
        except EOFError:  # the parent exited without close(): nothing left to do
            return
        if texts is None:
            return
        try:
            result: Any = detector.detect_batch(texts)
        except Exception as e:  # noqa: BLE001 -- the parent re-raises it
            result = WorkerError(f"de-id worker failed on a batch: {e!r}")
        release_freed_memory()  # windows of a long note come a few at a time
        send(replies, result)


def main() -> None:
    """Entry of ``python -m fedmed.deid.worker`` (started by the pool)."""
    # The protocol owns the original stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    # WorkerError comes from fedmed.deid.workers, so the errors this process pickles name
    # that module (not __main__) and the parent can load them.
    main()
