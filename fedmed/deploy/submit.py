"""Submit a federation run to a running coordinator and follow it to the end.

``fedmed run FEDERATION --coordinator ADDR --kit DIR`` does, in order:

1. resolve the federation's settings (the folder's ``[tool.flwr.app.config]`` plus
   command-line overrides) exactly as simulation does;
2. **stage** a copy of the app folder under ``<state>/submissions/<name>/`` whose
   config section holds every resolved setting. Flower's ``--run-config`` only
   overrides keys the folder already has, and ``flwr run`` rewrites a folder's
   legacy ``[tool.flwr.federations]`` section in place, so the repository's folder
   is never handed to it;
3. check the coordinator with a TLS handshake against the kit's CA;
4. ``flwr run <staged> fedmed`` through a private FLWR_HOME (:mod:`fedmed.deploy.flwr_cli`),
   then ``flwr log <run id> --stream`` until the run ends, showing the coordinator's
   round lines;
5. read the run's outcome: its status from ``flwr ls``, its results from the
   ``FEDMED-RESULT`` line the ServerApp logs last (or the run directory when the
   coordinator shares this machine's file system).

Run directories are the coordinator's: a relative ``run-dir`` is resolved against the
coordinator's state folder (the SuperLink's working directory), so ``--out NAME``
names ``<coordinator state>/NAME`` — and submitting again with the same ``--out``
resumes that run from its last checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedmed.config import ConfigValue
from fedmed.deploy.errors import CoordinatorUnreachable, DeployError
from fedmed.deploy.flwr_cli import CONNECTION, Connection
from fedmed.deploy.probe import probe_coordinator
from fedmed.deploy.processes import ChildProcess, flower_command
from fedmed.server.progress import RESULT_MARKER
from fedmed.state import state_dir

# Flower logs each server line twice (console format and "MM/DD/YYYY HH:MM:SS:LEVEL:")
FLOWER_DUPLICATE = re.compile(r"^\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:")
COPIED_TABLES = ("build-system", "project")
FlatValue = bool | int | float | str | list[str]
MAX_APP_FILES = 100
MAX_APP_BYTES = 10_000_000


@dataclass
class RunOutcome:
    """What the coordinator reported about a finished (or lost) run."""

    run_id: str
    status: str
    result: dict[str, Any] | None
    log: Path


def staged_pyproject(folder: Path, settings: Mapping[str, ConfigValue]) -> str:
    """The federation folder's pyproject with its config section replaced by ``settings``."""
    document = tomllib.loads((Path(folder) / "pyproject.toml").read_text(encoding="utf-8"))
    staged: dict[str, Any] = {
        table: _flat(document.get(table, {}), table) for table in COPIED_TABLES
    }
    app = document["tool"]["flwr"]["app"]
    staged["tool"] = {"flwr": {"app": {
        "publisher": str(app.get("publisher", "fedmed")),
        "components": _flat(app["components"], "components"),
        "config": dict(settings),
    }}}
    header = "# Staged by fedmed run --coordinator from " + str(Path(folder).resolve()) + "\n"
    return header + tomli_w.dumps(staged)


def _flat(table: Mapping[str, Any], name: str) -> dict[str, FlatValue]:
    """A table of scalars and string lists (what a federation's pyproject holds)."""
    flat: dict[str, FlatValue] = {}
    for key, value in table.items():
        if isinstance(value, bool | int | float | str):
            flat[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            flat[key] = [str(v) for v in value]
        elif isinstance(value, dict) and key == "license" and "text" in value:
            flat[key] = str(value["text"])
        # other nested values (readme tables, urls) are not needed to build a FAB
    return flat


def stage_app(folder: Path, settings: Mapping[str, ConfigValue], name: str) -> Path:
    """Write the staged app folder for one submission (the folder's other files copied,
    its pyproject rewritten); return it."""
    folder = Path(folder).resolve()
    staged = state_dir("submissions", name).resolve()
    files = [
        source
        for source in folder.rglob("*")
        if source.is_file()
        and not _skipped(source.relative_to(folder))
        and not source.is_relative_to(state_dir().resolve())
    ]
    if len(files) > MAX_APP_FILES or sum(f.stat().st_size for f in files) > MAX_APP_BYTES:
        raise DeployError(
            f"{folder} holds {len(files)} files; a federation folder should hold its "
            "pyproject.toml and at most a few small modules (data stay at the sites)"
        )
    for source in files:
        target = staged / source.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (staged / "pyproject.toml").write_text(staged_pyproject(folder, settings), encoding="utf-8")
    return staged


def _skipped(relative: Path) -> bool:
    return relative.name == "pyproject.toml" or any(
        part.startswith(".") or part == "__pycache__" for part in relative.parts
    )


def submit(
    folder: Path,
    settings: Mapping[str, ConfigValue],
    address: str,
    ca_cert: Path,
    name: str,
    echo: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> RunOutcome:
    """Start the run on the coordinator at ``address`` and follow it until it ends."""
    probe_coordinator(address, ca_cert)
    staged = stage_app(folder, settings, name)
    connection = Connection(state_dir("flwr-submit"), address, Path(ca_cert).resolve()).write()
    started = connection.run_json(["run", str(staged), CONNECTION], timeout=120)
    if not started.get("success"):
        message = str(started.get("error-message", "")).strip().splitlines()
        raise DeployError(f"the coordinator refused the run: {message[-1] if message else '?'}")
    run_id = str(started["run-id"])
    if echo is not None:
        echo(f"run {run_id} started on {address}")
    log_path = staged / f"run-{run_id}.log"
    follower = ChildProcess(
        "flwr-log",
        [flower_command("flwr"), "log", run_id, CONNECTION, "--stream"],
        log_path,
        env=connection.env(),
        echo=_filtered(echo) if echo is not None else None,
    ).start()
    try:
        follower.wait_for({}, timeout=timeout if timeout is not None else 10**9)
    except KeyboardInterrupt:  # the user stops the run, not only the log stream
        stop_run(connection, run_id)
        raise
    finally:
        follower.stop(grace=5)
    status = run_status(connection, run_id)
    return RunOutcome(run_id, status, _result_from_log(log_path), log_path)


def _filtered(echo: Callable[[str], None]) -> Callable[[str], None]:
    def show(line: str) -> None:
        if line.strip() and not FLOWER_DUPLICATE.match(line) and RESULT_MARKER not in line:
            echo(line)

    return show


def _result_from_log(log_path: Path) -> dict[str, Any] | None:
    """The last ``FEDMED-RESULT {json}`` line the ServerApp logged, if any."""
    result = None
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        at = line.find(RESULT_MARKER)
        if at >= 0:
            try:
                result = json.loads(line[at + len(RESULT_MARKER) :])
            except json.JSONDecodeError:
                continue
    return result


def run_status(connection: Connection, run_id: str, attempts: int = 3) -> str:
    """``finished:completed``, ``finished:failed``, ``running``…; ``unknown`` if unreachable."""
    for attempt in range(attempts):
        try:
            document = connection.run_json(["ls", "--run-id", run_id, CONNECTION], timeout=30)
        except (DeployError, CoordinatorUnreachable):
            document = {}
        for run in document.get("runs", []):
            if str(run.get("run-id")) == run_id:
                return str(run.get("status", "unknown"))
        time.sleep(2 * (attempt + 1))
    return "unknown"


def stop_run(connection: Connection, run_id: str) -> None:
    """Ask the coordinator to stop a run (after Ctrl-C in ``fedmed run``)."""
    connection.run(["stop", run_id, CONNECTION], timeout=30)
