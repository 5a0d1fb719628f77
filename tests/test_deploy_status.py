"""``fedmed coordinator status`` and the reconciliation of runs a killed ServerApp left running.

A real SuperLink (TLS, node authentication, database; no nodes, no run: seconds) serves
the module. Its run directories are written here the way a deployed ServerApp writes them
(:mod:`fedmed.server.run_index`, ``metrics.json``, the signed coordinator log); a ServerApp
killed outright is a child process that indexed its run and exited. The real thing — a
ServerApp killed with SIGKILL in a running federation — is what ``bench/soak.py --part
deploy`` does at its end (docs/operator-guide.md § Soak).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmed.audit import AuditLog, verify_log
from fedmed.cli import main
from fedmed.deploy.flwr_cli import Connection
from fedmed.deploy.kit import load_coordinator_kit
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.processes import free_port
from fedmed.deploy.runs import AUDIT_KIND
from fedmed.outputs import write_json_atomic
from fedmed.server.run_index import RUN_INDEX_FILE, process_start, record_run

REPO = Path(__file__).resolve().parents[1]
HEART_DATA = REPO / "fedmed" / "data" / "uci_heart"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackFederation]:
    root = tmp_path_factory.mktemp("deploy-status")
    with contextlib.ExitStack() as cleanup:  # a coordinator only: no node, no run
        federation = LoopbackFederation(root, "heart", ["cleveland"], HEART_DATA)
        cleanup.callback(federation.stop)
        federation.provision()
        federation.start_coordinator()
        yield federation


def write_run(state: Path, name: str, status: str, rounds: int, flower_run: str,
              dead: bool) -> Path:
    """A run directory as a ServerApp leaves it after ``rounds`` rounds, indexed by a
    process that is gone (``dead``) or by this one (alive)."""
    run_dir = state / "runs" / name
    (run_dir / "checkpoints").mkdir(parents=True)
    write_json_atomic(run_dir / "metrics.json", {
        "run-id": f"{name}-0001", "status": status, "config": {"num-server-rounds": 5},
        "rounds": [{"round": r, "aggregated_at": 1.0 + r} for r in range(1, rounds + 1)]
        + [{"round": rounds + 1, "events": []}],  # a round under way
        "privacy": {"cleveland": {"epsilon": 0.25 * rounds, "delta": 1e-5}},
    })  # fmt: skip
    log = AuditLog.open(run_dir / "audit" / "coordinator.jsonl", state / "coordinator" / "keys",
                        "coordinator")  # fmt: skip
    log.append("run-start", {"run": f"{name}-0001"})
    home = state / "coordinator"
    if dead:
        code = (f"from fedmed.server.run_index import record_run; "
                f"record_run({str(home)!r}, {flower_run!r}, {str(run_dir)!r})")  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=True)
    else:
        record_run(home, flower_run, run_dir)
    return run_dir


@pytest.fixture
def runs(federation: LoopbackFederation) -> Iterator[dict[str, Path]]:
    """Three runs: completed, killed (its ServerApp gone, metrics say running), live."""
    assert federation.coordinator is not None
    state = federation.coordinator.layout.root
    made = {
        "done": write_run(state, "done", "completed", 5, "111", dead=True),
        "killed": write_run(state, "killed", "running", 2, "222", dead=True),
        "live": write_run(state, "live", "running", 3, "333", dead=False),
    }
    yield made
    (state / "coordinator" / RUN_INDEX_FILE).unlink()
    shutil.rmtree(state / "runs")
    (state / "runs").mkdir()


def status(state: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    code = main(["coordinator", "status", "--home", str(state), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_status_shows_runs_sites_rounds_and_epsilon_and_a_dead_run_is_not_running(
    federation: LoopbackFederation, runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert federation.coordinator is not None
    state = federation.coordinator.layout.root
    code, out, err = status(state, capsys)
    assert code == 0, err
    lines = {line.split(" — ")[0].strip(): line for line in out.splitlines() if " — " in line}
    assert "Flower run 111" in lines["runs/done"] and "fedmed completed" in lines["runs/done"]
    assert "round 5 of 5" in lines["runs/done"] and "cleveland 1.25" in lines["runs/done"]
    killed = lines["runs/killed"]
    assert "fedmed interrupted: its ServerApp ended without recording an end" in killed
    assert "unknown to Flower" in killed and "(not yet recorded)" in killed
    assert "round 2 of 5" in killed  # the round under way is not counted
    assert "fedmed running" in lines["runs/live"]
    node_id = json.loads((state / "registered.json").read_text()).popitem()[1]["node_id"]
    assert f"node {node_id}: registered" in lines["cleveland"]  # never connected

    code, out, _ = status(state, capsys, "--json")
    document = json.loads(out)
    assert code == 0 and document["reachable"] is True
    by_dir = {Path(r["run_dir"]).name: r for r in document["runs"]}
    assert [name for name, r in by_dir.items() if r["live"]] == ["live"]
    assert by_dir["killed"]["recorded"] is False and by_dir["killed"]["last_round"] == 2
    assert by_dir["done"]["epsilon"] == {"cleveland": 1.25}
    assert document["sites"][0]["site"] == "cleveland"
    # nothing was written by looking
    assert json.loads((runs["killed"] / "metrics.json").read_text())["status"] == "running"


def test_the_coordinator_records_a_run_its_serverapp_left_running(
    federation: LoopbackFederation, runs: dict[str, Path]
) -> None:
    assert federation.coordinator is not None
    marked = federation.coordinator.reconcile_runs()
    assert [Path(m.run_dir).name for m in marked] == ["killed"]
    metrics = json.loads((runs["killed"] / "metrics.json").read_text())
    assert metrics["status"].startswith("interrupted: its ServerApp ended without recording")
    assert metrics["stopped"]["round"] == 2  # resuming drops it (fedmed.server.resume)
    log = verify_log(runs["killed"] / "audit" / "coordinator.jsonl")
    assert log.ok
    assert log.entries[-1]["kind"] == AUDIT_KIND
    assert log.entries[-1]["payload"]["flower_run"] == "222"
    assert log.entries[-1]["payload"]["last_round"] == 2
    for name, expected in (("done", "completed"), ("live", "running")):  # left alone
        assert json.loads((runs[name] / "metrics.json").read_text())["status"] == expected
    assert federation.coordinator.reconcile_runs() == []  # once only


def test_an_unreachable_coordinator_shows_its_files_and_exits_2(
    federation: LoopbackFederation, runs: dict[str, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert federation.coordinator is not None
    state = federation.coordinator.layout.root
    home = tmp_path / "copy"  # the same files, pointing at a port nobody listens on
    for name in ("superlink.db", "registered.json"):
        (home / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(state / name, home / name)
    shutil.copytree(state / "coordinator", home / "coordinator")
    kit = load_coordinator_kit(federation.kits)
    Connection(home / "flwr", f"127.0.0.1:{free_port()}", kit.ca_cert).write()
    code, out, err = status(home, capsys)
    assert code == 2
    assert "does not answer" in out and "what the files say" in out
    assert "fedmed completed" in out and "Flower ?" in out
    killed = next(line for line in out.splitlines() if "Flower run 222" in line)
    assert killed.strip().startswith(f"{runs['killed']} — ")  # outside this home: whole path
    assert "fedmed interrupted: its ServerApp ended without recording an end" in killed
    assert len(err.strip().splitlines()) == 1 and "did not answer" in err
    code, out, _ = status(home, capsys, "--json")
    assert code == 2 and json.loads(out)["reachable"] is False


def test_a_folder_that_is_no_coordinator_home_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = status(tmp_path, capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "is not a coordinator's state folder" in err


def test_a_process_that_exited_has_no_start_time() -> None:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert process_start(int(child.stdout)) == ""
    assert process_start() != ""
