"""Detection in worker processes, so that a large batch uses more than one core.

Why processes: the detector is mostly Python (Presidio's recognizers and context scoring)
plus a small sequential LSTM, so threads would queue on the interpreter lock; one process
per core nearly multiplies the notes per second by the number of cores.

Why not ``multiprocessing``: ``fork`` copies a process that may hold locks of other
threads (a Flower node's gRPC threads, torch's thread pool) and can hang; ``spawn`` and
``forkserver`` re-import the caller's main script in every child, which runs a script's
top-level code again unless it has an ``if __name__ == "__main__":`` guard. Here each
worker is ``python -m fedmed.deid.worker`` (:mod:`fedmed.deid.worker`): it imports only
fedmed, builds its own :class:`fedmed.deid.presidio_engine.Detector` from the same settings
and answers requests on a pipe. Messages are pickles exchanged only between this process
and the children it started; this module holds the pool and the message protocol.

A note's spans do not depend on the other notes of its batch (the tagger's features are
per token, its windows per note), so splitting a batch over workers gives the same spans
as detecting it in one process (``tests/test_deid_presidio.py`` checks it).
"""

from __future__ import annotations

import contextlib
import dataclasses
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


def send(stream: IO[bytes], message: Any) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
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
                    [sys.executable, "-m", "fedmed.deid.worker"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            for proc in self._procs:  # all start loading at once, then wait for each
                send(self._pipes(proc)[0], dataclasses.replace(config, workers=1))
            for proc in self._procs:
                if receive(self._pipes(proc)[1]) != READY:
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
                send(self._pipes(proc)[0], chunk)
            for proc in busy:
                out.extend(receive(self._pipes(proc)[1]))
        return out

    def close(self) -> None:
        """Ask every worker to stop; kill those that do not within a few seconds."""
        for proc in self._procs:
            try:
                send(self._pipes(proc)[0], None)
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
