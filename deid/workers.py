"""Detection in worker processes, so that a large batch uses more than one core.

Why processes: the detector is mostly Python (Presidio's recognizers and context scoring)
plus a small sequential LSTM, so threads would queue on the interpreter lock; one process
per core nearly multiplies the notes per second by the number of cores.

Why not ``multiprocessing``: ``fork`` copies a process that may hold locks of other
threads (a Flower node's gRPC threads, torch's thread pool) and can hang; ``spawn`` and
``forkserver`` re-import the caller's main script in every child, which runs a script's
top-level code again unless it has an ``if __name__ == "__main__":`` guard. Here each
worker is ``python -m fedmed.deid.workers``: it imports only fedmed, builds its own
:class:`fedmed.deid.presidio_engine.Detector` from the same settings and answers
requests on a pipe. Messages are pickles exchanged only between this process and the
children it started.

A note's spans do not depend on the other notes of its batch (the tagger's features are
per token, its windows per note), so splitting a batch over workers gives the same spans
as detecting it in one process (``tests/test_deid_presidio.py`` checks it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any

from fedmed.deid.config import DeidConfig
from fedmed.deid.phi import Span

READY = "ready"


class WorkerError(RuntimeError):
    """A worker process died or failed; the caller can detect in-process instead."""


def _send(stream: IO[bytes], message: Any) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    message = pickle.load(stream)
    if isinstance(message, WorkerError):
        raise message
    return message


class WorkerPool:
    """``n`` detector processes; :meth:`detect` splits a batch over them in order."""

    def __init__(self, config: DeidConfig, n: int) -> None:
        if n < 1:
            raise ValueError("a worker pool needs at least one worker")
        self._procs: list[subprocess.Popen[bytes]] = []
        with self._closed_on_failure("de-id worker processes failed to start"):
            for _ in range(n):
                self._procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fedmed.deid.workers"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            for proc in self._procs:  # all start loading at once, then wait for each
                _send(self._pipes(proc)[0], dataclasses.replace(config, workers=1))
            for proc in self._procs:
                if _receive(self._pipes(proc)[1]) != READY:
                    raise WorkerError("a de-id worker answered its start-up out of protocol")

    @contextlib.contextmanager
    def _closed_on_failure(self, what: str) -> Iterator[None]:
        """A broken pipe or protocol error stops every worker: none is left half-way."""
        try:
            yield
        except (OSError, EOFError, pickle.PickleError) as e:
            self.close()
            raise WorkerError(f"{what} ({e!r})") from e
        except WorkerError:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self._procs)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    @staticmethod
    def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
        assert proc.stdin is not None and proc.stdout is not None
        return proc.stdin, proc.stdout

    def detect(self, texts: Sequence[str]) -> list[list[Span]]:
        """Spans per text, in order: contiguous, equal shares to the workers at once."""
        share = -(-len(texts) // len(self._procs))
        chunks = [list(texts[i:i + share]) for i in range(0, len(texts), share)]
        busy = self._procs[:len(chunks)]
        out: list[list[Span]] = []
        with self._closed_on_failure("a de-id worker process failed"):
            for proc, chunk in zip(busy, chunks, strict=True):
                _send(self._pipes(proc)[0], chunk)
            for proc in busy:
                out.extend(_receive(self._pipes(proc)[1]))
        return out

    def close(self) -> None:
        """Ask every worker to stop; kill those that do not within a few seconds."""
        for proc in self._procs:
            try:
                _send(self._pipes(proc)[0], None)
                self._pipes(proc)[0].close()
            except OSError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self._procs = []


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Worker loop: settings, then batches of texts until ``None`` or end of input;
    reply with the spans of each batch."""
    from fedmed.deid.presidio_engine import Detector

    config = pickle.load(requests)
    try:
        detector = Detector(config)
    except Exception as e:  # noqa: BLE001 -- reported to the parent, which decides
        _send(replies, WorkerError(f"de-id worker could not build its detector: {e!r}"))
        return
    _send(replies, READY)
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
        _send(replies, result)


def main() -> None:
    """Entry of ``python -m fedmed.deid.workers`` (started by :class:`WorkerPool`)."""
    # The protocol owns the original stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    # Through the package, so that pickled WorkerErrors name fedmed.deid.workers, not
    # __main__, and the parent can load them.
    from fedmed.deid.workers import main as package_main

    package_main()
