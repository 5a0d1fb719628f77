"""The coordinator home's index of deployed runs: which Flower run wrote which run directory.

Why it exists: Flower's Control API (``flwr ls``) knows a run by its Flower run id and
status, and nothing of the fedmed run directory its ServerApp writes; the run directory
(``metrics.json``) knows fedmed's own run id, and nothing of Flower's. ``fedmed coordinator
status`` must join the two, and must tell a run whose ServerApp died — its ``metrics.json``
still says ``running`` — from one that is still going. So every deployed ServerApp, when it
opens (or resumes) its run directory, appends one line to ``<coordinator home>/runs.jsonl``:

``{"flower-run", "run-dir", "pid", "pid-start", "time"}`` — the Flower run id, the run
directory's absolute path, and the ServerApp process's PID with its start time in clock
ticks since boot (``/proc/<pid>/stat`` field 22), so that a PID reused by another process
is never taken for the ServerApp.

The line is written *before* the ServerApp touches the run directory: whoever reads the
index and finds a directory's latest ServerApp alive leaves that directory alone, so a
run being resumed is never marked as interrupted under the new ServerApp's feet. A resumed
run appends a second line for the same directory (a new Flower run id); the last line of a
directory is its current run. Lines are appended with one ``write`` in append mode, so two
ServerApps starting at once do not interleave.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_INDEX_FILE = "runs.jsonl"


@dataclass(frozen=True)
class IndexedRun:
    """One line of the index: a ServerApp that opened a run directory."""

    flower_run: str
    run_dir: Path
    pid: int
    pid_start: str
    time: float

    def serverapp_alive(self) -> bool | None:
        """Whether that ServerApp process still exists; None where this system has no
        ``/proc`` to tell (then only Flower's word decides)."""
        if not Path("/proc").is_dir() or not self.pid:
            return None
        return process_start(self.pid) == self.pid_start


def process_start(pid: int | str = "self") -> str:
    """The start time of process ``pid`` in clock ticks since boot ("" if it is gone).

    A zombie counts as gone: it has exited, only its parent has not reaped it yet.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces
    return "" if fields[0] == "Z" else fields[19]


def record_run(home: Path, flower_run: str, run_dir: Path) -> None:
    """Append this ServerApp's line for ``run_dir`` to ``<home>/runs.jsonl``."""
    entry = {
        "flower-run": str(flower_run),
        "run-dir": str(Path(run_dir).resolve()),
        "pid": os.getpid(),
        "pid-start": process_start(),
        "time": round(time.time(), 3),
    }
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / RUN_INDEX_FILE, "a", encoding="utf-8") as index:
        index.write(json.dumps(entry, sort_keys=True) + "\n")


def read_index(home: Path) -> list[IndexedRun]:
    """Every line of ``<home>/runs.jsonl``, oldest first; unreadable lines are skipped (a
    line cut short by a crash must not hide the runs after it)."""
    path = Path(home) / RUN_INDEX_FILE
    if not path.is_file():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry: dict[str, Any] = json.loads(line)
            runs.append(
                IndexedRun(
                    flower_run=str(entry["flower-run"]),
                    run_dir=Path(entry["run-dir"]),
                    pid=int(entry.get("pid", 0)),
                    pid_start=str(entry.get("pid-start", "")),
                    time=float(entry.get("time", 0.0)),
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return runs


def current_runs(home: Path) -> dict[Path, IndexedRun]:
    """Run directory → its latest line (a resumed run's current Flower run)."""
    return {run.run_dir: run for run in read_index(home)}
