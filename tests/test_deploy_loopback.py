"""Deployment end to end with real Flower processes on loopback.

provision → a coordinator (SuperLink: TLS, node authentication, database) and three
hospital nodes (SuperNodes) → ``fedmed run --coordinator``. One federation serves the
module; every process is stopped by PID when it ends (fedmed.deploy.loopback), and a
scenario starts with whatever an earlier one crashed restarted (``whole``).

Time is the constraint: Flower starts one ClientApp process per message (four per
SecAgg+ round, plus one per evaluation), so a deployed round costs tens of seconds on
the 2-core CI machine. ``make test`` therefore runs the acceptance run only — two
rounds with SecAgg+ and DP over TLS with node authentication. The poisoned update, the
dropout, the coordinator restart and a node whose kit claims another site run when
``FEDMED_DEPLOY_SLOW=1``
(``make test-deploy``, which ``.ci/run`` runs after ``make test``); the coordinator's
rejection logic is also covered in-process by tests/test_deploy_validation.py and
resume bookkeeping by tests/test_deploy_resume.py.

The scenarios never sleep for a guessed time: they act on what the processes report
(a node's log line for each reply it sent, the checkpoint the coordinator writes after
each round, the submitter exiting). Timeouts only bound those waits; a loaded machine
makes the tests slower, not flaky.
"""

from __future__ import annotations

import json
import os
import shutil
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
SENT = r"Sent successfully"  # a SuperNode logs it once for every reply it pushed
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
    # Each node ran its ClientApps in its warm worker (fedmed.deploy.warm_worker), not in a
    # fresh flwr-clientapp process per message; the coordinator timed each exchange.
    for site in SITES:
        log = federation.nodes[site].layout.log.read_text(encoding="utf-8")
        assert "fedmed warm worker ready" in log
        for server_round in (1, 2):  # SecAgg+'s four stages are four train tasks a round
            assert log.count(f"fedmed task train round={server_round} status=completed") == 4
    assert all(r["exchange_seconds"]["fit"] > 0 for r in metrics["rounds"])


@pytest.fixture
def whole(federation: LoopbackFederation) -> LoopbackFederation:
    """The module's federation with every process running: a scenario that crashed one
    on purpose, and failed before restarting it, must not fail the next scenarios too."""
    federation.revive()
    return federation


@slow
@pytest.mark.timeout(900)
def test_a_poisoned_update_is_rejected_and_the_round_goes_on(whole: LoopbackFederation) -> None:
    args = ["--rounds", "1", "--set", "secagg=false", "--set", "max-update-norm=5"]
    assert main(run_args(whole, POISON, "runs/poison", *args)) == 0
    run_dir = coordinator_run_dir(whole, "runs/poison")
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


@slow
@pytest.mark.timeout(900)
def test_a_node_claiming_another_site_is_refused_on_both_sides(
    whole: LoopbackFederation,
) -> None:
    """Hole 1 of issue 13: switzerland's kit, its kit.toml edited to say cleveland."""
    kit = whole.root / "impostor-kit"
    shutil.copytree(whole.kits / "sites" / "switzerland", kit)
    text = (kit / "kit.toml").read_text()
    assert 'site = "switzerland"' in text
    (kit / "kit.toml").write_text(text.replace('site = "switzerland"', 'site = "cleveland"'))
    whole.stop_node("switzerland")
    impostor = whole.node("switzerland", kit=kit, home="impostor")
    with impostor:
        impostor.start()
        args = ("--rounds", "1", "--set", "secagg=false", "--set", "evaluate-every=0")
        assert main(run_args(whole, HEART, "runs/impostor", *args)) == 0
    run_dir = coordinator_run_dir(whole, "runs/impostor")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (event,) = [e for e in metrics["rounds"][0]["events"] if e["kind"] == "identity-mismatch"]
    assert event["site"] == "switzerland"
    assert "registered to switzerland but replied as cleveland" in event["reason"]
    entries = audit_kinds(run_dir)
    assert [e["payload"]["site"] for e in entries if e["kind"] == "identity-mismatch"] == [
        "switzerland"]
    (round_entry,) = [e["payload"] for e in entries if e["kind"] == "round"]
    assert round_entry["joined"] == ["cleveland", "hungary"]
    home = whole.root / "site-homes" / "impostor"  # the node signed its refusal too
    refusals = [json.loads(line)["payload"] for line in (home / "audit.jsonl").open()
                if json.loads(line)["kind"] == "refusal"]  # fmt: skip
    assert len(refusals) == 1 and "registered to site 'switzerland'" in refusals[0]["reason"]
    assert json.loads((home / "ledger.json").read_text())["releases"] == []


def submitter(federation: LoopbackFederation, out: str, *extra: str) -> ChildProcess:
    """``fedmed run --coordinator`` as its own process (so a test can outlive it)."""
    return ChildProcess(
        "fedmed-run",
        [sys.executable, "-m", "fedmed.cli", *run_args(federation, HEART, out, *extra)],
        federation.root / f"submit-{out.replace('/', '-')}.log",
    ).start()


def wait_for_checkpoint(run: ChildProcess, run_dir: Path, server_round: int) -> None:
    """Wait until the coordinator has checkpointed ``server_round`` (the round is over).

    Fails at once, with the submitter's last lines, if the run ends first; otherwise
    only the test's own timeout bounds the wait (a loaded machine is slow, not wrong).
    """
    checkpoint = run_dir / "checkpoints" / f"round-{server_round:04d}.npz"
    while not checkpoint.exists():
        if not run.running():
            assert checkpoint.exists(), f"the run ended before round {server_round}: {run.tail()}"
        time.sleep(0.5)


@slow
@pytest.mark.timeout(1200)
def test_a_node_killed_mid_round_does_not_stop_the_run_and_can_rejoin(
    whole: LoopbackFederation,
) -> None:
    node = whole.nodes["switzerland"].process
    assert node is not None
    mark = node.seen
    # Enough rounds for the restarted node to be back before the run ends: with warm
    # workers a SecAgg+ round takes seconds, less than a node's start.
    run = submitter(whole, "runs/dropout", "--rounds", "10", "--set", "evaluate-every=0")
    run_dir = coordinator_run_dir(whole, "runs/dropout")
    try:
        # Its second reply of the run answers round 1's share-keys stage: from then on the
        # others mask with it, so the coordinator must rebuild its masks from their shares.
        sent = node.wait_for_count(SENT, 2, timeout=900, since=mark)
        assert sent == 2, f"switzerland sent {sent} replies; the run says: {run.tail()}"
        node.kill()  # a crash, not a clean stop
        wait_for_checkpoint(run, run_dir, 1)
        whole.stop_node("switzerland")  # its orphaned helpers, by PID
        whole.start_node("switzerland")  # it rejoins
        run.wait_for({}, 1200)  # the run ends (the test's timeout bounds the wait)
        assert run.returncode() == 0, run.tail()
    finally:
        run.stop()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    joined = [e["payload"]["joined"] for e in audit_kinds(run_dir) if e["kind"] == "round"]
    assert joined[0] == ["cleveland", "hungary"]  # round 1 went on without it
    assert SITES in joined[1:]  # and it was back for a later round
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, 11))


@slow
@pytest.mark.timeout(1200)
def test_a_restarted_coordinator_resumes_from_its_last_checkpoint(
    whole: LoopbackFederation,
) -> None:
    args = ("--rounds", "3", "--set", "secagg=false", "--set", "evaluate-every=0")
    run = submitter(whole, "runs/resume", *args)
    run_dir = coordinator_run_dir(whole, "runs/resume")
    try:
        wait_for_checkpoint(run, run_dir, 1)
        assert whole.coordinator is not None
        whole.coordinator.process.kill()  # the coordinator machine crashes
        whole.coordinator.stop()
        run.wait_for({}, 120)  # its log stream ends; stopped below if it did not
    finally:
        run.stop()
    run_id = json.loads((run_dir / "metrics.json").read_text())["run-id"]
    whole.start_coordinator()  # same state folder and database; nodes reconnect
    assert main(run_args(whole, HEART, "runs/resume", *args)) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["run-id"] == run_id
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    kinds = [e["kind"] for e in audit_kinds(run_dir)]  # one chain, resumed
    assert kinds.count("run-start") == 1 and "run-resume" in kinds
    for site in SITES:  # the completed round 1 was not trained (nor counted) again
        assert ledger_rounds(whole, site, run_id).count(1) == 1
        assert set(ledger_rounds(whole, site, run_id)) == {1, 2, 3}
