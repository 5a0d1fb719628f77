"""A coordinator started with ``--memory-state`` (its SuperLink state in memory, not in
``superlink.db``): a deployed run works, and after a restart — which forgets the node
registrations — the kit's keys are registered afresh and restarted nodes run again.

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
)

from fedmed.cli import build_parser, main
from fedmed.deploy.coordinator import IN_MEMORY_DATABASE
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.registry import REGISTRY_FILE


def test_the_start_command_offers_the_memory_state() -> None:
    args = build_parser().parse_args(
        ["coordinator", "start", "--kit", "kit", "--memory-state"])  # fmt: skip
    assert args.memory_state is True


def _plain_run(federation: LoopbackFederation, out: str) -> dict:
    args = ("--rounds", "2", "--set", "secagg=false", "--set", "evaluate-every=0")
    assert main(run_args(federation, HEART, out, *args)) == 0
    run_dir = coordinator_run_dir(federation, out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    rounds = [e for e in audit_kinds(run_dir) if e["kind"] == "round"]
    assert [e["payload"]["joined"] for e in rounds] == [SITES, SITES]  # named by the registry
    for site in SITES:
        assert ledger_rounds(federation, site, metrics["run-id"]) == [1, 2]
    return metrics


def _node_ids(federation: LoopbackFederation) -> set[str]:
    assert federation.coordinator is not None
    records = json.loads((federation.coordinator.layout.root / REGISTRY_FILE).read_text())
    return {record["node_id"] for record in records.values()}


@slow
@pytest.mark.timeout(900)
def test_a_memory_state_coordinator_runs_and_comes_back_with_restarted_nodes(
    tmp_path: Path,
) -> None:
    with LoopbackFederation(tmp_path, "heart", SITES, HEART_DATA,
                            memory_state=True) as federation:  # fmt: skip
        coordinator = federation.coordinator
        assert coordinator is not None
        assert coordinator.argv()[coordinator.argv().index("--database") + 1] == IN_MEMORY_DATABASE
        assert not coordinator.layout.database.exists()
        first = _plain_run(federation, "runs/memory-1")
        ids_before = _node_ids(federation)
        assert len(ids_before) == len(SITES) and "" not in ids_before

        for site in SITES:  # the documented restart: the coordinator, then its nodes
            federation.stop_node(site)
        coordinator.stop()
        federation.start_coordinator()
        federation.start_nodes(SITES)
        ids_after = _node_ids(federation)
        assert len(ids_after) == len(SITES) and ids_after.isdisjoint(ids_before)
        second = _plain_run(federation, "runs/memory-2")
        assert second["run-id"] != first["run-id"]
