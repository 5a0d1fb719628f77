"""Flower processes that fedmed starts, watches and always stops.

Why this exists: ``flower-superlink`` and ``flower-supernode`` each start helper
processes (a SuperExec in its *own* session, and per-message ``flwr-serverapp`` /
``flwr-clientapp`` processes), so stopping the one PID we started is not enough.
A :class:`ChildProcess` starts its command in a new session, copies every output
line to a log file (and optionally the console), keeps the last lines for error
messages, can wait for a line that means "ready" or "failed", and on
:meth:`ChildProcess.stop` signals the session and then every descendant it
recorded, by PID, escalating to SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TAIL_LINES = 200
WATCH_INTERVAL = 1.0


class ChildProcess:
    """One started command (see the module docstring)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.echo = echo
        self.process: subprocess.Popen[bytes] | None = None
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._seen = 0
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._descendants: dict[int, str] = {}

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.process.pid

    def start(self) -> ChildProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-output", daemon=True)
        self._reader.start()
        threading.Thread(target=self._watch, name=f"{self.name}-children", daemon=True).start()
        return self

    def _watch(self) -> None:
        """Keep learning our descendants while we run: Flower starts one per message, and a
        crashed parent leaves them orphaned where ``/proc`` no longer links them to us."""
        while self.running():
            self.remember_descendants()
            time.sleep(WATCH_INTERVAL)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_path, "a", encoding="utf-8") as log:
            for raw in self.process.stdout:
                line = ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip()
                log.write(line + "\n")
                log.flush()
                if self.echo is not None:
                    self.echo(line)
                with self._changed:
                    self._lines.append(line)
                    self._seen += 1
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def tail(self, count: int = 20) -> list[str]:
        with self._changed:
            return list(self._lines)[-count:]

    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for(
        self, patterns: Mapping[str, str], timeout: float, since: int = 0
    ) -> tuple[str | None, str]:
        """Wait until an output line matches one of ``patterns`` (regex → outcome name).

        Returns ``(outcome, line)``; ``(None, "")`` when the process exited or the
        timeout passed first. ``since`` skips lines counted before (see :attr:`seen`).
        """
        compiled = [(re.compile(p), outcome) for p, outcome in patterns.items()]
        found: list[tuple[str, str]] = []

        def match(line: str) -> bool:
            found.extend((outcome, line) for regex, outcome in compiled if regex.search(line))
            return bool(found)

        self._scan(match, timeout, since)
        return found[0] if found else (None, "")

    def wait_for_count(self, pattern: str, count: int, timeout: float, since: int = 0) -> int:
        """Wait until ``count`` output lines after ``since`` matched ``pattern``.

        For events a process logs once per occurrence (a node's "Sent successfully" per
        reply): tests wait for the n-th one instead of sleeping for a guessed time.
        Returns how many matched — fewer than ``count`` if the process exited or the
        timeout passed first.
        """
        regex = re.compile(pattern)
        matched = 0

        def match(line: str) -> bool:
            nonlocal matched
            matched += bool(regex.search(line))
            return matched >= count

        self._scan(match, timeout, since)
        return matched

    def _scan(self, done: Callable[[str], bool], timeout: float, since: int) -> None:
        """Feed each output line after the ``since``-th to ``done``, in order, until it
        returns True, the process has exited and its output is read, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        checked = since
        with self._changed:
            while True:
                lines = list(self._lines)
                new = self._seen - checked
                for line in lines[max(0, len(lines) - new) :] if new > 0 else []:
                    if done(line):
                        return
                checked = self._seen
                reader_done = self._reader is None or not self._reader.is_alive()
                remaining = deadline - time.monotonic()
                if (reader_done and not self.running()) or remaining <= 0:
                    return
                self._changed.wait(timeout=min(remaining, 0.5))

    @property
    def seen(self) -> int:
        """How many lines were read so far (a mark for :meth:`wait_for`)."""
        with self._changed:
            return self._seen

    def remember_descendants(self) -> None:
        """Record the PIDs below ours now, so :meth:`stop` can reach them after we exit."""
        if self.process is not None:
            found = descendants(self.process.pid)
            with self._changed:
                self._descendants.update(found)

    def kill(self) -> None:
        """SIGKILL only our own process, as a crash would (tests of dropouts); :meth:`stop`
        still reaches the helpers it leaves behind."""
        self.remember_descendants()
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM our session and recorded descendants; SIGKILL what is left after ``grace``."""
        if self.process is None:
            return None
        self.remember_descendants()
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
        with self._changed:
            recorded = dict(self._descendants)
        for pid, start in recorded.items():
            _signal_if_same(pid, start, signal.SIGTERM)
        deadline = time.monotonic() + grace
        try:
            self.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        for pid, start in recorded.items():
            while _same_process(pid, start) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_if_same(pid, start, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.process.returncode


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    return text[text.rfind(")") + 2 :].split()


def _same_process(pid: int, start: str) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[19] == start and fields[0] != "Z"


def _signal_if_same(pid: int, start: str, sig: signal.Signals) -> None:
    """Signal ``pid`` only if it is still the process we recorded (PIDs get reused)."""
    if _same_process(pid, start):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def descendants(root: int) -> dict[int, str]:
    """PID → start time of every process below ``root`` (Linux ``/proc``; empty elsewhere)."""
    if not Path("/proc").is_dir():
        return {}
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        starts[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid not in found and pid in starts:
            found[pid] = starts[pid]
            stack.extend(children.get(pid, []))
    return found


def port_free(host: str, port: int) -> bool:
    """True when ``host:port`` can be bound (the same way uvicorn binds: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for tests and local trials)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def flower_command(name: str) -> str:
    """The path of a Flower console script installed beside this Python."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def flower_env(**extra: str) -> dict[str, str]:
    """This environment, with this Python's scripts folder first on PATH.

    Flower's processes start their helpers by name (the SuperLink runs
    ``flower-superexec``, the SuperExec ``flwr-serverapp``/``flwr-clientapp``), so a
    virtual environment that was not activated (``.venv/bin/python -m pytest`` in
    ``make test``) must still be found first.
    """
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**os.environ, "PATH": os.pathsep.join([scripts, path]) if path else scripts, **extra}


def service_env(state: Path, flwr_home: Path) -> dict[str, str]:
    """The environment of a SuperLink or SuperNode that fedmed runs for ``state``.

    Its fedmed state and Flower home stay in the service's state folder (never the
    user's home), runtime dependency installation is off, and output is unbuffered so
    the readiness and failure lines :meth:`ChildProcess.wait_for` looks for arrive at once.
    """
    return flower_env(
        FEDMED_STATE=str(state),
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PYTHONUNBUFFERED="1",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C does, so ``with`` blocks stop children.

    A service manager stops a foreground ``fedmed coordinator start`` with SIGTERM;
    without this the process would die without stopping the SuperLink it started.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
