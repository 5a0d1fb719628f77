"""The node's wrapper around Flower's SuperNode and its warm ClientApp worker
(``fedmed.deploy.supernode_entry``, ``fedmed.deploy.warm_worker``), in parts. The whole
path — ``fedmed node start`` through the wrapper, tasks run by the worker — is exercised
by tests/test_deploy_loopback.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import types

import pytest
from flwr.clientapp.client_app import LoadClientAppError
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.message_pb2 import PullObjectRequest  # pylint: disable=E0611
from flwr.supernode import start_client_internal

from fedmed.deploy import supernode_entry, warm_worker
from fedmed.deploy.node import Node
from fedmed.deploy.supernode_entry import (
    CappedSleep,
    cap_supernode_pauses,
    runtime_address,
    split_args,
)
from fedmed.deploy.warm_worker import (
    PromptPulls,
    TaskClock,
    TaskSuperseded,
    WorkerStopping,
    _failure,
)


def test_idle_pauses_are_capped_and_everything_else_is_the_real_time_module() -> None:
    slept: list[float] = []
    fake = types.SimpleNamespace(sleep=slept.append, time=lambda: 42.0)
    capped = CappedSleep(fake, 0.1)  # type: ignore[arg-type]
    capped.sleep(3)
    capped.sleep(0.5)
    capped.sleep(0.02)
    assert slept == [0.1, 0.1, 0.02]
    assert capped.time() == 42.0


def test_the_cap_reaches_flowers_supernode_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_client_internal, "time", time)
    cap_supernode_pauses(0.2)
    assert isinstance(start_client_internal.time, CappedSleep)


def test_a_flower_without_the_expected_loop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start_client_internal, "time", object())
    with pytest.raises(RuntimeError, match="not the one fedmed's node wrapper was written for"):
        cap_supernode_pauses(0.2)


def test_fedmeds_flag_is_taken_out_and_the_runtime_address_read_from_flowers() -> None:
    poll, rest = split_args(["--fedmed-poll", "0.3", "--superlink", "h:9092", "--port", "9123"])
    assert poll == 0.3 and rest == ["--superlink", "h:9092", "--port", "9123"]
    assert runtime_address(rest) == "127.0.0.1:9123"
    assert split_args(["--port", "1"])[0] == supernode_entry.DEFAULT_POLL_SECONDS


def test_the_node_runs_flower_through_the_wrapper(tmp_path) -> None:  # noqa: ANN001
    node = Node.__new__(Node)
    node.coordinator, node.runtime_port, node.poll_seconds = "h:9092", 9200, 0.25
    node.kit = types.SimpleNamespace(ca_cert="ca.crt", node_key="node.key")
    node.layout = types.SimpleNamespace(node_config=tmp_path / "node-config.toml")
    argv = node.argv()
    assert argv[1:5] == ["-m", "fedmed.deploy.supernode_entry", "--fedmed-poll", "0.25"]
    assert argv[argv.index("--port") + 1] == "9200"


def test_a_task_line_says_what_ran_and_where_the_time_went() -> None:
    clock = TaskClock()
    for step in ("pull", "load", "app", "push"):
        clock.lap(step)
    message = types.SimpleNamespace(
        metadata=types.SimpleNamespace(message_type="train", group_id="3")
    )
    line = clock.line(message, "completed")  # type: ignore[arg-type]
    assert line.startswith("fedmed task train round=3 status=completed pull=")
    assert [p.split("=")[0] for p in line.split()[5:]] == ["pull", "load", "app", "push"]


def test_a_failed_app_is_reported_with_flowers_codes() -> None:
    assert _failure(LoadClientAppError("x"))[0] == ErrorCode.LOAD_CLIENT_APP_EXCEPTION
    code, reason = _failure(ValueError("bad site"))
    assert code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION and "bad site" in reason


class TwoTasks:
    """A Runtime API that hands out two tasks, then none (the worker's SuperExec side)."""

    def __init__(self) -> None:
        self.tokens = ["first", "second"]

    def AcquireTask(self, _request: object) -> types.SimpleNamespace:  # noqa: N802
        token = self.tokens.pop(0) if self.tokens else ""
        return types.SimpleNamespace(HasField=lambda _name: bool(token), token=token)

    def close(self) -> None:
        pass


def serve_two_tasks() -> list[str]:
    """Run the worker's serve loop until two tasks ended; their statuses in order."""
    stop = threading.Event()
    statuses: list[str] = []

    def on_task(status: str) -> None:
        statuses.append(status)
        if len(statuses) == 2:
            stop.set()

    warm_worker.serve("127.0.0.1:1", stop, poll_seconds=0.01, on_task=on_task)
    return statuses


def test_a_task_that_fails_outside_the_app_does_not_stop_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []

    def run_task(_address: str, token: str, *_rest: object) -> tuple[str, None]:
        ran.append(token)
        if token == "first":  # e.g. its message withdrawn while the coordinator restarted
            raise RuntimeError("No messages received from Runtime API")
        return SubStatus.COMPLETED, None

    monkeypatch.setattr(warm_worker, "_client", lambda *_args: TwoTasks())
    monkeypatch.setattr(warm_worker, "run_task", run_task)
    statuses = serve_two_tasks()
    assert ran == ["first", "second"]
    assert statuses == [SubStatus.FAILED, SubStatus.COMPLETED]


def test_a_worker_that_exits_is_started_again(capfd: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    starts: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        if len(starts) == 2:
            stop.set()  # the third start stops the watch: it outlives nothing
        starts.append(subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
        return starts[-1]

    supernode_entry.keep_worker_running(start, stop, pause=0.01)
    assert len(starts) == 3
    assert "fedmed warm worker exited with code 3" in capfd.readouterr().err


def test_a_worker_that_exits_cleanly_is_not_started_again(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Exit code 0 is the worker's answer to SIGTERM/SIGINT (``warm_worker.main``): the node
    is stopping, and a fresh worker would only import torch for nothing."""
    starts: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        starts.append(subprocess.Popen([sys.executable, "-c", "raise SystemExit(0)"]))
        return starts[-1]

    supernode_entry.keep_worker_running(start, threading.Event(), pause=0.01)
    assert len(starts) == 1
    assert "stopped on request" in capfd.readouterr().err


class ObjectsNeverCome:
    """A task's Runtime API whose message object is registered but never available."""

    def __init__(self) -> None:
        self.pulls = 0

    def PullObject(self, _request: object) -> types.SimpleNamespace:  # noqa: N802
        self.pulls += 1
        return types.SimpleNamespace(object_found=True, object_available=False)


def test_a_task_whose_objects_never_come_gives_way_to_the_newer_task() -> None:
    newer = iter([None, None, "newer"])  # the SuperNode moved on after a while
    pulls = PromptPulls(ObjectsNeverCome(), lambda: next(newer), threading.Event(),  # type: ignore[arg-type]
                        pause=0.001, check_every=0.01)
    with pytest.raises(TaskSuperseded) as caught:
        pulls.PullObject(PullObjectRequest())
    assert caught.value.token == "newer"


def test_a_stopping_node_ends_a_wait_for_objects() -> None:
    stop = threading.Event()
    stop.set()
    pulls = PromptPulls(ObjectsNeverCome(), lambda: None, stop, pause=0.001)  # type: ignore[arg-type]
    with pytest.raises(WorkerStopping):
        pulls.PullObject(PullObjectRequest())


def test_the_newer_task_of_a_superseded_one_runs_next(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    outcomes = {"stale": (SubStatus.FAILED, "fresh"), "fresh": (SubStatus.COMPLETED, None)}

    def run_task(_address: str, token: str, *_rest: object) -> tuple[str, str | None]:
        ran.append(token)
        return outcomes[token]

    api = TwoTasks()
    api.tokens = ["stale"]  # "fresh" comes from the superseded task, not from AcquireTask
    monkeypatch.setattr(warm_worker, "_client", lambda *_args: api)
    monkeypatch.setattr(warm_worker, "run_task", run_task)
    statuses = serve_two_tasks()
    assert ran == ["stale", "fresh"]
    assert statuses == [SubStatus.FAILED, SubStatus.COMPLETED]
