"""A coordinator's runs and sites as its files and its SuperLink tell them; runs left "running".

Two sources, joined:

- the **files** of the coordinator home (the ``--state`` folder): the run index
  (:mod:`fedmed.server.run_index`, one line per ServerApp: Flower run id, run directory,
  process), each run directory's ``metrics.json`` (``status``, rounds, ε per site) and the
  registered node keys (``registered.json``: site → Flower node id);
- the **SuperLink**, through Flower's CLI (:mod:`fedmed.deploy.flwr_cli`): ``flwr ls``
  (each run's status: pending, starting, running, ``finished:completed|failed|stopped``)
  and ``flwr supernode ls`` (each node online or offline, and since when).

Why runs are reconciled: measured with Flower 1.42, a ServerApp stopped by SIGTERM
writes its end (``status``, a signed ``run-end``) and Flower marks the run
``finished:failed`` at once; one killed outright (SIGKILL, the OOM killer, a crashed
machine) writes nothing, and Flower goes on listing the run as ``running`` until the
ServerApp's heartbeat lapses (~50 s), then ``finished:failed`` — "No heartbeat received
from the task". Its ``metrics.json`` says ``running`` for ever. :func:`reconcile_runs`
finds such runs — files say running, the ServerApp process recorded in the index is gone
(or, where that cannot be checked, Flower says the run is over) — and records the end:
``status = "interrupted: …"`` and ``stopped`` in ``metrics.json`` (a resubmission with
the same ``--out`` resumes it as before: :mod:`fedmed.server.resume` drops ``stopped``), a
signed ``run-interrupted`` entry in the run's coordinator audit log, and, if Flower still
lists the run as live, ``flwr stop`` so both sides agree. ``fedmed coordinator start``
runs it when the SuperLink is up and then every :data:`RECONCILE_SECONDS` while it runs;
``fedmed coordinator status`` only reads, and shows such a run as interrupted, "not yet
recorded".
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedmed.audit import AuditLog
from fedmed.deploy.errors import DeployError
from fedmed.deploy.flwr_cli import CONNECTION, Connection
from fedmed.deploy.probe import probe_coordinator
from fedmed.deploy.registry import REGISTRY_FILE
from fedmed.errors import FedmedError
from fedmed.outputs import write_json_atomic
from fedmed.server.run_index import IndexedRun, read_index

HOME_DIR = "coordinator"  # <state>/coordinator: the deployed ServerApps' coordinator home
FLOWER_LIVE = ("pending", "starting", "running")
RECONCILE_SECONDS = 10.0
INTERRUPTED = "interrupted"
AUDIT_KIND = "run-interrupted"


@dataclass
class FlowerView:
    """What the SuperLink said about runs and nodes, or why it said nothing."""

    reachable: bool
    error: str = ""
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)


def ask_flower(connection: Connection, timeout: float = 30.0, nodes: bool = True) -> FlowerView:
    """``flwr ls`` (and ``flwr supernode ls``) through ``connection``; an unreachable
    SuperLink is a view with ``reachable=False`` and the reason, never an exception."""
    try:
        probe_coordinator(connection.address, connection.ca_cert, timeout=5.0)
        listed = connection.run_json(["ls", CONNECTION], timeout)
        if not listed.get("success"):
            raise DeployError(f"flwr ls failed: {listed.get('error-message', '?')}")
        view = FlowerView(True, runs={str(r["run-id"]): r for r in listed.get("runs", [])})
        if nodes:
            found = connection.run_json(["supernode", "ls", CONNECTION], timeout)
            view.nodes = {str(n["node-id"]): n for n in found.get("nodes", [])}
        return view
    except FedmedError as exc:
        return FlowerView(False, error=str(exc))


@dataclass
class RunState:
    """One run directory of the coordinator, as the files and Flower tell it."""

    run_dir: str
    run_id: str
    flower_run: str
    earlier_flower_runs: list[str]
    flower_status: str  # "" when Flower was not asked or not reachable; "unknown to Flower"
    flower_details: str
    status: str  # fedmed's: metrics.json's status, or "interrupted: …" found now
    recorded: bool  # whether ``status`` is what the files say (False: found, not written)
    last_round: int
    rounds: int
    epsilon: dict[str, float | None]
    serverapp_alive: bool | None

    @property
    def live(self) -> bool:
        return self.status == "running"


def _metrics(run_dir: Path) -> dict[str, Any]:
    try:
        document = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return document if isinstance(document, dict) else {}


def last_completed_round(document: dict[str, Any]) -> int:
    """The last round the coordinator aggregated (a round under way has no ``aggregated_at``)."""
    done = [int(r["round"]) for r in document.get("rounds", []) if "aggregated_at" in r]
    return max(done, default=0)


def _epsilon(document: dict[str, Any]) -> dict[str, float | None]:
    """Each site's ε as this run recorded it (``privacy.<site>.epsilon``: the site's total
    spent, as its own ledger composes every run; None: no DP bound)."""
    spent: dict[str, float | None] = {}
    for site, summary in sorted(document.get("privacy", {}).items()):
        value = summary.get("epsilon") if isinstance(summary, dict) else None
        spent[site] = float(value) if isinstance(value, int | float) else None
    return spent


def _interruption(
    status: str, alive: bool | None, flower: dict[str, Any] | None, reachable: bool
) -> str:
    """Why a run whose files say ``running`` is over ("" when it is not, or cannot be told).

    The ServerApp process decides where it can be checked (it runs on this machine); else
    Flower's word: a run it lists as finished, or no longer lists at all.
    """
    if status != "running" or alive:
        return ""
    said = f"Flower: {flower.get('status')}" if flower else "unknown to Flower"
    details = str(flower.get("status-details", "")) if flower else ""
    if details and details != "N/A":
        said += f", {details.rstrip('.')}"
    if alive is False:
        return f"its ServerApp ended without recording an end ({said})" if reachable else (
            "its ServerApp ended without recording an end"
        )
    if reachable and (flower is None or flower.get("status") not in FLOWER_LIVE):
        return f"the coordinator says the run is over ({said})"
    return ""


def run_states(root: Path, flower: FlowerView | None) -> list[RunState]:
    """Every indexed run directory of the coordinator home ``root``, oldest first."""
    index = read_index(Path(root) / HOME_DIR)
    by_dir: dict[Path, list[IndexedRun]] = {}
    for entry in index:
        by_dir.setdefault(entry.run_dir, []).append(entry)
    states = []
    for run_dir, entries in by_dir.items():
        current = entries[-1]
        document = _metrics(run_dir)
        listed = flower.runs.get(current.flower_run) if flower is not None else None
        reachable = flower is not None and flower.reachable
        status = str(document.get("status", "not recorded"))
        alive = current.serverapp_alive()
        reason = _interruption(status, alive, listed, reachable)
        flower_status = "" if not reachable else (
            str(listed.get("status", "")) if listed else "unknown to Flower"
        )
        states.append(
            RunState(
                run_dir=str(run_dir),
                run_id=str(document.get("run-id", "")),
                flower_run=current.flower_run,
                earlier_flower_runs=[e.flower_run for e in entries[:-1]],
                flower_status=flower_status,
                flower_details=str(listed.get("status-details", "")) if listed else "",
                status=f"{INTERRUPTED}: {reason}" if reason else status,
                recorded=not reason,
                last_round=last_completed_round(document),
                rounds=int(document.get("config", {}).get("num-server-rounds", 0) or 0),
                epsilon=_epsilon(document),
                serverapp_alive=alive,
            )
        )
    return states


def flower_only_runs(states: list[RunState], flower: FlowerView) -> list[dict[str, Any]]:
    """Runs Flower lists that no indexed run directory names (a ServerApp that failed
    before it opened its directory, or a run from before the index existed)."""
    known = {s.flower_run for s in states} | {r for s in states for r in s.earlier_flower_runs}
    return [run for run_id, run in flower.runs.items() if run_id not in known]


def reconcile_runs(
    root: Path, connection: Connection | None, ask_when_unsure: bool = True
) -> list[RunState]:
    """Record the end of every run of the coordinator state folder ``root`` whose ServerApp
    died without writing it (see the module docstring); returns those runs.

    A run whose ServerApp is known alive costs one ``/proc`` read and no call to Flower.
    Flower is asked only about runs that need its word: a dead ServerApp's (to quote it,
    and stop the run if Flower still lists it live) and, with ``ask_when_unsure``, a run
    whose ServerApp cannot be checked (no ``/proc``, or indexed without a process).
    """
    root = Path(root)
    candidates = [
        s for s in run_states(root, None)
        if not s.recorded or (ask_when_unsure and s.live and s.serverapp_alive is None)
    ]  # fmt: skip
    if not candidates:
        return []
    flower = ask_flower(connection, nodes=False) if connection is not None else None
    marked = []
    for state in run_states(root, flower):
        if state.recorded:
            continue
        listed = flower.runs.get(state.flower_run) if flower is not None else None
        if connection is not None and listed and listed.get("status") in FLOWER_LIVE:
            connection.run(["stop", state.flower_run, CONNECTION], timeout=30)
            state.status += "; stopped in Flower too"
        record_interruption(root, state)
        marked.append(state)
    return marked


def record_interruption(root: Path, state: RunState) -> None:
    """Write the end of an interrupted run into its ``metrics.json`` and signed audit log."""
    from fedmed.server.app import COORDINATOR_LOG  # torch and Flower: only when needed

    run_dir = Path(state.run_dir)
    document = _metrics(run_dir)
    if document.get("status") != "running":  # its ServerApp wrote an end meanwhile
        return
    reason = state.status.removeprefix(f"{INTERRUPTED}: ")
    document["status"] = state.status
    document["stopped"] = {"round": state.last_round, "reason": reason}
    write_json_atomic(run_dir / "metrics.json", document)
    audit = AuditLog.open(run_dir / COORDINATOR_LOG, root / HOME_DIR / "keys", "coordinator")
    audit.append(
        AUDIT_KIND,
        {
            "run": state.run_id,
            "flower_run": state.flower_run,
            "last_round": state.last_round,
            "reason": reason,
            "noticed": round(time.time(), 3),
        },
    )


@dataclass
class SiteState:
    """A registered site: its node id and what Flower says of its node."""

    site: str
    node_id: str
    status: str  # online / offline / registered (never connected) / "" (Flower not asked)
    since: str  # when it went online, or offline
    online_seconds: float | None


def site_states(root: Path, flower: FlowerView | None) -> list[SiteState]:
    """The sites whose node keys the coordinator registered (``registered.json``)."""
    try:
        records = json.loads((Path(root) / REGISTRY_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        records = {}
    sites = []
    for record in sorted(records.values(), key=lambda r: str(r.get("site", ""))):
        node_id = str(record.get("node_id", ""))
        node = flower.nodes.get(node_id, {}) if flower is not None and flower.reachable else {}
        status = str(node.get("status", "")) if node else ""
        since = str(node.get("online-at" if status == "online" else "offline-at", "") or "")
        sites.append(
            SiteState(
                site=str(record.get("site", "?")),
                node_id=node_id,
                status=status or ("not listed by Flower" if node_id and flower and
                                  flower.reachable else ""),
                since="" if since == "N/A" else since,
                online_seconds=float(node["online-elapsed"]) if status == "online" else None,
            )
        )
    return sites


def as_json(
    root: Path, flower: FlowerView, runs: list[RunState], sites: list[SiteState]
) -> dict[str, Any]:
    """``fedmed coordinator status --json``."""
    return {
        "home": str(root),
        "reachable": flower.reachable,
        "error": flower.error,
        "runs": [{**asdict(r), "live": r.live} for r in runs],
        "flower-only-runs": flower_only_runs(runs, flower) if flower.reachable else [],
        "sites": [asdict(s) for s in sites],
    }
