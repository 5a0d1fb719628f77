"""Deployment end to end with real Flower processes on loopback.

provision → a coordinator (SuperLink: TLS, node authentication, database) and three
hospital nodes (SuperNodes) → ``fedmed run --coordinator``. One federation serves the
module; every process is stopped by PID when it ends (fedmed.deploy.loopback).

Time is the constraint: Flower starts one ClientApp process per message (four per
SecAgg+ round, plus one per evaluation), and on the 2-core CI machine a deployed round
costs ~60 s with SecAgg+ and ~45 s plain under load. ``make test`` therefore runs the
acceptance run only — two rounds with SecAgg+ and DP over TLS with node authentication
(~3 min). The poisoned-update run (~1.5 min), the dropout (~4.5 min) and the coordinator
restart (~3.5 min) run when ``FEDMED_DEPLOY_SLOW=1`` (``make test-deploy``); the
coordinator's rejection logic is also covered in-process by tests/test_deploy_validation.py
and resume bookkeeping by tests/test_deploy_resume.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmed.audit import verify_log
from fedmed.cli import main
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.processes import ChildProcess

REPO = Path(__file__).resolve().parents[1]
HEART = REPO / "examples" / "heart"
POISON = REPO / "tests" / "deploy_apps" / "poison"
HEART_DATA = REPO / "fedmed" / "data" / "uci_heart"
SITES = ["cleveland", "hungary", "switzerland"]
slow = pytest.mark.skipif(
    os.environ.get("FEDMED_DEPLOY_SLOW") != "1",
    reason="minutes of real processes; set FEDMED_DEPLOY_SLOW=1 (make test-deploy)",
)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackFederation]:
    with LoopbackFederation(
        tmp_path_factory.mktemp("deploy"), "heart", SITES, HEART_DATA
    ) as federation:
        yield federation


def run_args(federation: LoopbackFederation, folder: Path, out: str, *extra: str) -> list[str]:
    return [
        "run", str(folder), "--coordinator", federation.address, "--kit", str(federation.kits),
        "--set", f"sites={','.join(SITES)}", "--out", out, *extra,
    ]  # fmt: skip


def coordinator_run_dir(federation: LoopbackFederation, out: str) -> Path:
    assert federation.coordinator is not None
    return federation.coordinator.layout.root / out


def ledger_rounds(federation: LoopbackFederation, site: str, run: str) -> list[int]:
    ledger = json.loads((federation.nodes[site].site_home / "ledger.json").read_text())
    return [entry["round"] for entry in ledger["releases"] if entry["run"] == run]


def audit_kinds(run_dir: Path) -> list[dict]:
    log = run_dir / "audit" / "coordinator.jsonl"
    assert verify_log(log).ok
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.timeout(420)
def test_two_rounds_with_secagg_and_dp_over_tls(
    federation: LoopbackFederation, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--rounds", "2", "--set", "evaluate-every=0")  # evaluation costs a process per site
    assert main(run_args(federation, HEART, "runs/secagg", *args)) == 0
    out = capsys.readouterr().out
    assert "Secure aggregation completed" in out  # the coordinator ran SecAgg+
    for site in SITES:  # the per-site table printed on the submitting side
        assert site in out
    run_dir = coordinator_run_dir(federation, "runs/secagg")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["config"]["secagg"] is True and metrics["config"]["dp"] is True
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert sorted(metrics["final"]["per_site"]) == SITES
    for site in SITES:
        assert 0 < metrics["privacy"][site]["epsilon"] < 10
        assert ledger_rounds(federation, site, metrics["run-id"]) == [1, 2]
    rounds = [e for e in audit_kinds(run_dir) if e["kind"] == "round"]
    assert [e["payload"]["joined"] for e in rounds] == [SITES, SITES]


@slow
@pytest.mark.timeout(300)
def test_a_poisoned_update_is_rejected_and_the_round_goes_on(
    federation: LoopbackFederation,
) -> None:
    args = ["--rounds", "1", "--set", "secagg=false", "--set", "max-update-norm=5"]
    assert main(run_args(federation, POISON, "runs/poison", *args)) == 0
    run_dir = coordinator_run_dir(federation, "runs/poison")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    events = metrics["rounds"][0]["events"]
    assert [(e["kind"], e["site"]) for e in events] == [("rejected-update", "switzerland")]
    assert "exceeds the bound 5" in events[0]["reason"]
    entries = audit_kinds(run_dir)
    rejected = [e["payload"] for e in entries if e["kind"] == "rejected-update"]
    assert [(p["site"], p["round"]) for p in rejected] == [("switzerland", 1)]
    (round_entry,) = [e["payload"] for e in entries if e["kind"] == "round"]
    assert round_entry["joined"] == ["cleveland", "hungary"]
    assert sorted(metrics["final"]["per_site"]) == SITES  # everyone still evaluates


def submitter(federation: LoopbackFederation, out: str, *extra: str) -> ChildProcess:
    """``fedmed run --coordinator`` as its own process (so a test can outlive it)."""
    return ChildProcess(
        "fedmed-run",
        [sys.executable, "-m", "fedmed.cli", *run_args(federation, HEART, out, *extra)],
        federation.root / f"submit-{out.replace('/', '-')}.log",
    ).start()


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout:.0f} s"
        time.sleep(0.5)


@slow
@pytest.mark.timeout(600)
def test_a_node_killed_mid_round_does_not_stop_the_run_and_can_rejoin(
    federation: LoopbackFederation,
) -> None:
    run = submitter(federation, "runs/dropout", "--rounds", "3", "--set", "evaluate-every=0")
    try:
        assert run.wait_for({r"Secure aggregation commencing": "fit"}, 240)[0] == "fit"
        time.sleep(20)  # inside round 1's SecAgg+ stages
        federation.nodes["switzerland"].process.kill()  # a crash, not a clean stop
        run_dir = coordinator_run_dir(federation, "runs/dropout")
        wait_for_file(run_dir / "checkpoints" / "round-0001.npz", 300)
        federation.stop_node("switzerland")
        federation.start_node("switzerland")  # it rejoins
        assert run.wait_for({}, 500) == (None, "")
        assert run.returncode() == 0, run.tail(20)
    finally:
        run.stop()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    joined = [
        e["payload"]["joined"] for e in audit_kinds(run_dir) if e["kind"] == "round"
    ]
    assert joined[0] == ["cleveland", "hungary"]  # round 1 went on without it
    assert joined[-1] == SITES  # and it was back by the last round
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]


@slow
@pytest.mark.timeout(900)
def test_a_restarted_coordinator_resumes_from_its_last_checkpoint(
    federation: LoopbackFederation,
) -> None:
    args = ("--rounds", "3", "--set", "secagg=false", "--set", "evaluate-every=0")
    run = submitter(federation, "runs/resume", *args)
    run_dir = coordinator_run_dir(federation, "runs/resume")
    try:
        wait_for_file(run_dir / "checkpoints" / "round-0001.npz", 400)
        assert federation.coordinator is not None
        federation.coordinator.process.kill()  # the coordinator machine crashes
        federation.coordinator.stop()
        run.wait_for({}, 120)
    finally:
        run.stop()
    run_id = json.loads((run_dir / "metrics.json").read_text())["run-id"]
    federation.start_coordinator()  # same state folder and database; nodes reconnect
    assert main(run_args(federation, HEART, "runs/resume", *args)) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run-id"] == run_id
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    kinds = [e["kind"] for e in audit_kinds(run_dir)]  # one chain, resumed
    assert kinds.count("run-start") == 1 and "run-resume" in kinds
    for site in SITES:  # the completed round 1 was not trained (nor counted) again
        assert ledger_rounds(federation, site, run_id).count(1) == 1
        assert set(ledger_rounds(federation, site, run_id)) == {1, 2, 3}
