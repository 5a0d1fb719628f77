"""A site's warm ClientApp worker: Flower's SuperExec and ClientApp process in one process
that lives as long as the node.

Why: with Flower 1.42's default ``--isolation subprocess`` a SuperNode runs
``flower-superexec``, which looks for work once a second and starts a fresh
``flwr-clientapp`` process for every message; that process imports Python, Flower,
torch and Opacus before it trains a few milliseconds' worth of a small model. On the
2-core reference machine that cost dominated a deployed round (docs/operator-guide.md
§ 10). ``fedmed node start`` therefore runs the SuperNode with ``--isolation process``
— Flower's documented mode in which "a separate independent process" executes the
ClientApps — and this module is that process: it asks the SuperNode's Runtime API for a
ClientApp task every ``poll_seconds`` and runs each one here, with the imports already
done and the app loaded once per FAB.

Each task goes through the same steps, with Flower's own functions, as
``flwr.supernode.runtime.run_clientapp``: pull the message, context, run and FAB with the
task's token; install the FAB (once per FAB hash) and load its ClientApp; call it; push
the reply (or an ``Error`` reply naming the exception) and then the task's status and
context. A heartbeat runs while the task runs, as in Flower's process. Tasks run one at
a time, which is what a SuperNode hands out (it processes one message at a time).

What differs from a fresh process per message: module state lives on between messages.
fedmed's ClientApp keeps none that matters — every message reads the site home, policy,
ledger and data from disk and seeds its own generators — and the tests of
tests/test_deploy_loopback.py run through this worker.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from logging import ERROR, INFO, WARNING
from types import FrameType
from typing import Any

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.message_pb2 import (  # pylint: disable=E0611
    PullObjectRequest,
    PullObjectResponse,
)
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import PULL_MAX_TIME, TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

DEFAULT_POLL_SECONDS = 0.05
CONNECT_RETRY_SECONDS = 0.2


class AppCache:
    """ClientApps by FAB hash: a FAB is installed and its app imported once per worker."""

    def __init__(self) -> None:
        self._apps: dict[str, ClientApp] = {}
        self._load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)

    def app(self, run: Run, fab: Fab) -> ClientApp:
        if fab.hash_str not in self._apps:
            install_from_fab(fab.content, skip_prompt=True)
            self._apps[fab.hash_str] = self._load(run.fab_id, run.fab_version, fab.hash_str)
        return self._apps[fab.hash_str]


class TaskClock:
    """Seconds spent in each step of a task, logged as one line per task: what
    ``bench/deploy_overhead.py`` reads to say where a deployed round's time goes."""

    PREFIX = "fedmed task"

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.steps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.steps[step] = self.steps.get(step, 0.0) + now - self._last
        self._last = now

    def line(self, message: Message | None, status: str) -> str:
        kind = message.metadata.message_type if message is not None else "?"
        group = message.metadata.group_id if message is not None else ""
        timings = " ".join(f"{step}={seconds:.3f}" for step, seconds in self.steps.items())
        return f"{self.PREFIX} {kind} round={group or '-'} status={status} {timings}"


class TaskSuperseded(Exception):
    """The SuperNode handed out a newer task while this one still waited for its objects."""

    def __init__(self, token: str) -> None:
        super().__init__("the SuperNode moved on to a newer message before this one's "
                         "objects arrived (its run stopped, or the coordinator restarted)")
        self.token = token


class WorkerStopping(Exception):
    """The node is stopping while a task still waits for its message's objects."""


class PromptPulls:
    """A task's Runtime API client whose object pulls ask again every ``pause`` seconds
    while the SuperNode is still fetching the object — and give up once it never will.

    Why prompt: the SuperNode hands out a task as soon as the message's metadata arrived
    and only then pulls the message's objects (the model's weights) from the SuperLink.
    Flower's puller meets "not available yet" with a backoff of 1 s, then 2 s, … (``flwr``'s
    ``PULL_INITIAL_BACKOFF``): nothing next to a fresh process's start-up, but measured
    here as 1–3.5 s of every exchange once a warm worker asks at once. The object is on
    the same machine, so asking again after 20 ms costs nothing.

    Why give up: a SuperNode fetches one message's objects at a time, in the order the
    messages came, and creates the next message's task only after that fetch ended. If the
    run stopped meanwhile (a coordinator restart), Flower 1.42 drops the fetch but leaves
    the task pending, its objects never to come; Flower's own design runs such a task in a
    process of its own, which then waits out ``PULL_MAX_TIME`` (2 h) harmlessly. A warm
    worker runs one task at a time, so that wait would stall the site — measured: a resumed
    run waited on two such nodes until the test's 20-minute limit. So every
    ``check_every`` seconds of waiting it asks the SuperNode for a newer task: if there is
    one, this task's fetch is over and the task is given up (:class:`TaskSuperseded`, which
    carries the newer task's token to run next). Flower's limit on the whole pull still
    applies, and a stopping node ends the wait (:class:`WorkerStopping`).
    """

    def __init__(self, client: RuntimeHttpClient, newer_task: Callable[[], str | None],
                 stop: threading.Event, pause: float = 0.02, check_every: float = 0.5,
                 patience: float = PULL_MAX_TIME) -> None:
        self._client = client
        self._newer_task = newer_task
        self._stop = stop
        self._pause = pause
        self._check_every = check_every
        self._patience = patience

    def PullObject(self, request: PullObjectRequest) -> PullObjectResponse:  # noqa: N802
        started = time.monotonic()
        next_check = started + self._check_every
        while True:
            response: PullObjectResponse = self._client.PullObject(request)
            waiting = response.object_found and not response.object_available
            now = time.monotonic()
            if not waiting or now - started >= self._patience:
                return response
            if now >= next_check:
                token = self._newer_task()
                if token:
                    raise TaskSuperseded(token)
                next_check = now + self._check_every
            if self._stop.wait(self._pause):
                raise WorkerStopping("the node is stopping")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def _client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    """A client of the SuperNode's Runtime API, which binds 127.0.0.1 without TLS (the
    ``--isolation subprocess`` SuperExec connects the same way)."""
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def _failure(ex: Exception) -> tuple[int, str]:
    """Flower's error code and reason for a ClientApp that raised (as its process reports)."""
    if isinstance(ex, LoadClientAppError):
        return ErrorCode.LOAD_CLIENT_APP_EXCEPTION, (
            "An exception was raised when attempting to load `ClientApp`"
        )
    return ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex)}:<'{ex}'>"


def run_task(address: str, token: str, apps: AppCache, newer_task: Callable[[], str | None],
             stop: threading.Event) -> tuple[str, str | None]:
    """Run the ClientApp task behind ``token``: its final status (``SubStatus``) and the
    token of a newer task to run next, if this one was superseded (see :class:`PromptPulls`)."""
    client = _client(address, "flwr-clientapp", token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message: Message | None = None
    reply: Message | None = None
    context: Context | None = None
    following: str | None = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    clock = TaskClock()
    try:
        pulls = PromptPulls(client, newer_task, stop)
        message, context, run, fab = pull_task_input(pulls)  # type: ignore[arg-type]
        clock.lap("pull")
        app = apps.app(run, fab)
        clock.lap("load")
        reply = app(message=message, context=context)
        clock.lap("app")
        status, details = SubStatus.COMPLETED, ""
    except (TaskSuperseded, WorkerStopping) as ex:
        log(WARNING, "fedmed task given up: %s", ex)
        details = str(ex)
        following = ex.token if isinstance(ex, TaskSuperseded) else None
    except Exception as ex:  # noqa: BLE001 - reported to the coordinator as Flower does
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        code, details = _failure(ex)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as ex:  # noqa: BLE001 - the status below still says it failed
            log(ERROR, "Failed to push reply message", exc_info=ex)
            status, details = SubStatus.FAILED, f"reply not delivered: {ex}"
        push_task_output(client, context, status, details)
        clock.lap("push")
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    log(INFO, "%s", clock.line(message, status))
    return status, following


def _acquire(client: RuntimeHttpClient) -> str | None:
    """The token of the oldest ClientApp task the SuperNode has pending, if any."""
    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    return str(res.token) if res.HasField("task") and res.token else None


def serve(address: str, stop: threading.Event, poll_seconds: float = DEFAULT_POLL_SECONDS,
          on_task: Callable[[str], None] | None = None) -> None:
    """Take ClientApp tasks from the SuperNode at ``address`` and run them until ``stop``."""
    apps = AppCache()
    client = _client(address, "SuperExec")

    def newer_task() -> str | None:
        try:
            return _acquire(client)
        except Exception:  # noqa: BLE001 - the SuperNode is restarting: no newer task known
            return None

    token: str | None = None
    try:
        while not stop.is_set():
            if token is None:
                try:
                    token = _acquire(client)
                except Exception:  # noqa: BLE001 - the SuperNode's API is not up yet, or restarting
                    stop.wait(CONNECT_RETRY_SECONDS)
                    continue
                if token is None:
                    stop.wait(poll_seconds)
                    continue
            try:
                status, token = run_task(address, token, apps, newer_task, stop)
            except Exception as ex:  # noqa: BLE001 - one task's failure must not stop the node
                # Flower's own design runs each task in a fresh process, so a task that
                # fails outside the app (its message withdrawn while the coordinator
                # restarted, a reply the SuperNode refused) ends only that process. Here
                # it must end only that task: a dead worker leaves a node that still
                # answers heartbeats but never replies, and the round waits on it.
                log(ERROR, "fedmed task failed outside the ClientApp; worker goes on",
                    exc_info=ex)
                status, token = SubStatus.FAILED, None
            if on_task is not None:
                on_task(status)
    finally:
        client.close()


def _warm_up() -> None:
    """Import what every training message needs before the first one arrives."""
    started = time.monotonic()
    import opacus  # noqa: F401
    import torch  # noqa: F401

    import fedmed.clients.app  # noqa: F401
    import fedmed.tasks  # noqa: F401

    # Opacus calls logging.basicConfig when imported: Flower's lines would reach the
    # root logger's handler too and appear twice in the node's log.
    logging.getLogger("flwr").propagate = False
    log(INFO, "fedmed warm worker ready (imports %.1f s)", time.monotonic() - started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS)
    args = parser.parse_args(argv)
    stop = threading.Event()

    def _request_stop(_signal: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)  # SIGINT here when the node is gone
    _warm_up()
    serve(args.runtime_api_address, stop, args.poll_seconds)


if __name__ == "__main__":
    main()
