"""``flower-supernode`` as ``fedmed node start`` runs it: Flower's own entry point, with a
shorter idle pause and fedmed's warm ClientApp worker beside it.

Why a wrapper (docs/operator-guide.md § 10): in Flower 1.42 an idle SuperNode sleeps 3 s
after every pull that found no message, and 0.5 s between looks for a finished reply;
no flag or setting changes either. A plain deployed round is one such exchange per node
(two with evaluation, four with SecAgg+), so the pauses alone cost a round ~1.5 s on
average and up to 3 s per exchange. This wrapper runs Flower's
``flwr.supernode.cli.flower_supernode`` unchanged except that those pauses are capped at
``--fedmed-poll`` seconds (default 0.1): the module's ``time`` is replaced by a proxy whose
``sleep`` is capped and whose other functions are the real ones. The cost is more pull
requests from an idle node (10 a second at 0.1 s instead of one every 3 s); a federation
of many nodes, or one over a slow link, can raise it (``fedmed node start --poll``).

The SuperNode's pulls of a message's weights from the SuperLink ask again every 50 ms
(at most ``--fedmed-poll``) instead of backing off from 1 s (:mod:`fedmed.server.object_pulls`).

It also starts :mod:`fedmed.deploy.warm_worker` as the "separate independent process"
that ``--isolation process`` expects, watching this process's PID, so the node is still
one command and one log (the worker's lines go to the same output), and starts it again
if it ever exits while the SuperNode runs (:func:`keep_worker_running`).

If Flower's internals ever move (no ``time`` in ``flwr.supernode.start_client_internal``),
the wrapper refuses to start rather than run with different polling silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

DEFAULT_POLL_SECONDS = 0.1
POLL_FLAG = "--fedmed-poll"
WATCH_SECONDS = 0.5
RESTART_PAUSE_SECONDS = 1.0
MAX_RESTART_PAUSE_SECONDS = 30.0
PULL_PAUSE_SECONDS = 0.05  # the SuperNode's pulls of a message's weights from the SuperLink
STABLE_SECONDS = 60.0  # a worker that lived this long died of its task, not its start


class CappedSleep:
    """Stands in for the ``time`` module in Flower's SuperNode loop: ``sleep`` is capped."""

    def __init__(self, real: ModuleType, cap: float) -> None:
        self._real = real
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        self._real.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def cap_supernode_pauses(cap: float) -> None:
    """Cap the SuperNode loop's pauses at ``cap`` seconds (see the module docstring)."""
    from flwr.supernode import start_client_internal

    if getattr(start_client_internal, "time", None) is not time:
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer uses the time module: this "
            "Flower version is not the one fedmed's node wrapper was written for"
        )
    start_client_internal.time = CappedSleep(time, cap)  # type: ignore[assignment]


def split_args(argv: Sequence[str]) -> tuple[float, list[str]]:
    """fedmed's ``--fedmed-poll SECONDS`` and the rest, which are flower-supernode's."""
    args = list(argv)
    poll = DEFAULT_POLL_SECONDS
    if POLL_FLAG in args:
        at = args.index(POLL_FLAG)
        poll = float(args[at + 1])
        del args[at : at + 2]
    return poll, args


def runtime_address(args: Sequence[str]) -> str:
    """The Runtime API address the SuperNode binds (``--host``/``--port``, Flower's defaults)."""
    from flwr.supercore.constant import SUPERNODE_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST

    values = {"--host": UVICORN_DEFAULT_HOST, "--port": str(SUPERNODE_UVICORN_DEFAULT_PORT)}
    for flag in values:
        if flag in args:
            values[flag] = args[list(args).index(flag) + 1]
    return f"{values['--host']}:{values['--port']}"


def start_worker(address: str, poll: float) -> subprocess.Popen[bytes]:
    """The warm worker, watching this process (it stops when the SuperNode does)."""
    return subprocess.Popen(  # its output is this process's: the node's one log
        [sys.executable, "-m", "fedmed.deploy.warm_worker", "--runtime-api-address", address,
         "--parent-pid", str(os.getpid()), "--poll-seconds", str(poll / 2)],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def keep_worker_running(start: Callable[[], subprocess.Popen[bytes]],
                        stop: threading.Event | None = None,
                        pause: float = RESTART_PAUSE_SECONDS) -> None:
    """Start the warm worker and start it again whenever it fails, until ``stop``.

    Why: without its worker a SuperNode keeps answering heartbeats — so the coordinator
    sees the site as online — but runs no task, and every round waits on it for ever.
    Flower's own ``--isolation subprocess`` starts a fresh process per task and so has no
    such single point; this restores that property. The pause grows (doubling, to
    ``MAX_RESTART_PAUSE_SECONDS``) while the worker keeps dying within a few seconds of its
    start, so a worker that cannot start at all (a broken install) does not spin.

    Exit code 0 is not a failure: the worker exits cleanly only when asked to stop (SIGTERM
    or SIGINT — a service manager stopping the node signals every process of it — or its
    SuperNode gone). Starting it again then only spent seconds of imports on a node that was
    shutting down (seen in the node logs of ``make test-deploy``), so the watch ends.
    """
    stop = stop or threading.Event()
    wait = pause
    while not stop.is_set():
        started = time.monotonic()
        worker = start()
        while worker.poll() is None:
            if stop.wait(WATCH_SECONDS):
                worker.terminate()
                return
        lived = time.monotonic() - started
        if worker.returncode == 0:
            print(f"fedmed warm worker stopped on request after {lived:.1f} s; the node is "
                  "stopping", file=sys.stderr, flush=True)
            return
        wait = pause if lived > STABLE_SECONDS else min(wait * 2, MAX_RESTART_PAUSE_SECONDS)
        print(f"fedmed warm worker exited with code {worker.returncode} after {lived:.1f} s; "
              f"starting it again in {wait:.1f} s", file=sys.stderr, flush=True)
        stop.wait(wait)


def main(argv: Sequence[str] | None = None) -> None:
    poll, args = split_args(sys.argv[1:] if argv is None else argv)
    if not poll > 0:
        raise SystemExit(f"{POLL_FLAG} must be a positive number of seconds, got {poll}")
    cap_supernode_pauses(poll)
    from flwr.supernode import start_client_internal

    from fedmed.server.object_pulls import prompt_object_pulls

    prompt_object_pulls(start_client_internal, min(poll, PULL_PAUSE_SECONDS))
    address = runtime_address(args)
    threading.Thread(  # a daemon: it ends with the SuperNode, whose PID the worker watches
        target=keep_worker_running, args=(lambda: start_worker(address, poll),),
        name="fedmed-warm-worker", daemon=True,
    ).start()  # fmt: skip
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args, "--isolation", "process"]
    flower_supernode()


if __name__ == "__main__":
    main()
