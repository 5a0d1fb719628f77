"""A coordinator started with ``--memory-state`` (its SuperLink state in memory, not in
``superlink.db``): a deployed run works, and after a crash and restart — which forgets the
node registrations — the kit's keys are registered afresh, restarted nodes run again, and
the interrupted run resumes from its checkpoint (docs/operator-guide.md § 6).

Real Flower processes on loopback, so ``make test-deploy`` only (FEDMED_DEPLOY_SLOW=1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_deploy_loopback import (
    HEART,
    HEART_DATA,
    SITES,
    audit_kinds,
    coordinator_run_dir,
    ledger_rounds,
    run_args,
    slow,
    submitter,
    wait_for_checkpoint,
)

from fedmed.cli import build_parser, main
from fedmed.deploy.coordinator import IN_MEMORY_DATABASE
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.registry import REGISTRY_FILE


def test_the_start_command_offers_the_memory_state() -> None:
    args = build_parser().parse_args(
        ["coordinator", "start", "--kit", "kit", "--memory-state"])  # fmt: skip
    assert args.memory_state is True


def _node_ids(federation: LoopbackFederation) -> set[str]:
    assert federation.coordinator is not None
    records = json.loads((federation.coordinator.layout.root / REGISTRY_FILE).read_text())
    return {record["node_id"] for record in records.values()}


@slow
@pytest.mark.timeout(900)
def test_a_crashed_memory_state_coordinator_resumes_its_run_with_restarted_nodes(
    tmp_path: Path,
) -> None:
    """The guide's recovery, in memory mode: the coordinator dies after round 1, it and then
    the nodes are restarted (new node ids: the registrations were in memory), and the same
    submission continues the run from its checkpoint — same run id, round 1 not trained
    again, one audit chain."""
    with LoopbackFederation(tmp_path, "heart", SITES, HEART_DATA,
                            memory_state=True) as federation:  # fmt: skip
        coordinator = federation.coordinator
        assert coordinator is not None
        assert coordinator.argv()[coordinator.argv().index("--database") + 1] == IN_MEMORY_DATABASE
        assert not coordinator.layout.database.exists()
        ids_before = _node_ids(federation)
        assert len(ids_before) == len(SITES) and "" not in ids_before

        args = ("--rounds", "3", "--set", "secagg=false", "--set", "evaluate-every=0")
        run = submitter(federation, "runs/memory", *args)
        run_dir = coordinator_run_dir(federation, "runs/memory")
        try:
            wait_for_checkpoint(run, run_dir, 1)
            coordinator.process.kill()  # the coordinator machine crashes
            coordinator.stop()
            run.wait_for({}, 120)  # its log stream ends; stopped below if it did not
        finally:
            run.stop()
        run_id = json.loads((run_dir / "metrics.json").read_text())["run-id"]

        for site in SITES:  # the documented restart: the coordinator, then its nodes
            federation.stop_node(site)
        federation.start_coordinator()
        federation.start_nodes(SITES)
        ids_after = _node_ids(federation)
        assert len(ids_after) == len(SITES) and ids_after.isdisjoint(ids_before)

        assert main(run_args(federation, HEART, "runs/memory", *args)) == 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["run-id"] == run_id
        assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
        events = audit_kinds(run_dir)
        kinds = [e["kind"] for e in events]
        assert kinds.count("run-start") == 1 and "run-resume" in kinds
        rounds = [e for e in events if e["kind"] == "round"]
        assert [e["payload"]["joined"] for e in rounds] == [SITES] * 3  # named by the registry
        for site in SITES:  # the completed round 1 was not trained (nor counted) again
            assert ledger_rounds(federation, site, run_id).count(1) == 1
            assert set(ledger_rounds(federation, site, run_id)) == {1, 2, 3}
