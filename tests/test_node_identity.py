"""A site is who its key says, and refusals are witnessed (issue 13, holes 1 and 3).

Fast tests, no Ray: the node (``HospitalClient.fit``, what ``fedmed node start`` runs for
every fit message) and the coordinator's recorder (``RecordingStrategy``, what the
ServerApp runs) with the registry ``fedmed coordinator start`` writes
(``fedmed.deploy.registry.reconcile`` → ``identities.json``). The same scenario with
real Flower processes is ``test_a_node_claiming_another_site_is_refused_on_both_sides``
in tests/test_deploy_loopback.py (``make test-deploy``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from test_deploy_validation import Site, configured_recorder
from test_privacy_node import SITE, initial_weights, instructions, node

from fedmed.audit import verify_log
from fedmed.deploy.kit import load_coordinator_kit
from fedmed.deploy.provision import provision
from fedmed.deploy.registry import identities
from fedmed.privacy.reply import REGISTERED_AUDIT_KEY, REGISTERED_SITE, FitReply
from fedmed.server.identities import NodeIdentities, NodeIdentity
from fedmed.server.recording import FederationStopped, RecordingStrategy
from fedmed.server.witness import WitnessRecord

GLOBAL = [np.zeros(3, dtype=np.float32)]


def log_entries(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit.jsonl").open()]


def test_a_node_told_it_is_another_site_refuses_and_signs_why(tmp_path: Path) -> None:
    client = node(tmp_path / "home")
    config = {**instructions()(1), REGISTERED_SITE: "cleveland"}
    _, count, metrics = client.fit(initial_weights(), config)
    assert metrics["refused"] == 1 and count == 0
    assert "registered to site 'cleveland'" in str(metrics["reason"])
    refusal = log_entries(tmp_path / "home")[-1]
    assert refusal["kind"] == "refusal" and "registered to site" in refusal["payload"]["reason"]
    # The refusal's head travels back, so the coordinator can witness it.
    assert (metrics["audit-seq"], metrics["audit-hash"]) == (refusal["seq"], refusal["hash"])
    assert json.loads((tmp_path / "home" / "ledger.json").read_text())["releases"] == []


def test_a_node_whose_home_key_is_not_the_provisioned_one_refuses(tmp_path: Path) -> None:
    client = node(tmp_path / "home")
    config = {**instructions()(1), REGISTERED_SITE: SITE, REGISTERED_AUDIT_KEY: "0" * 64}
    _, count, metrics = client.fit(initial_weights(), config)
    assert metrics["refused"] == 1 and count == 0
    assert "is not the one provisioned" in str(metrics["reason"])


def test_the_registry_binds_node_ids_to_the_kit_sites_and_audit_keys(tmp_path: Path) -> None:
    provision(tmp_path / "fed", "heart", ["cleveland", "hungary"], ["127.0.0.1:9092"])
    kit = load_coordinator_kit(tmp_path / "fed")
    records = {"fp1": {"site": "cleveland", "node_id": "11"}, "fp2": {"site": "hungary",
               "node_id": ""}}  # fmt: skip
    table = identities(kit, records)
    anchors = kit.trust_anchors()
    assert table.nodes == {"11": NodeIdentity("cleveland", anchors.keys["site:cleveland"])}
    table.save(tmp_path / "identities.json")
    assert NodeIdentities.load(tmp_path / "identities.json").nodes == table.nodes


def _recorder(tmp_path: Path, witness: WitnessRecord | None = None) -> RecordingStrategy:
    registry = NodeIdentities({
        "11": NodeIdentity("cleveland", "k-cle"), "12": NodeIdentity("hungary", "k-hun"),
        "13": NodeIdentity("switzerland", "k-swi")})  # fmt: skip
    recorder, told = configured_recorder(
        tmp_path, ["11", "12", "13"], GLOBAL, witness=witness, identities=registry
    )
    assert {p.cid: ins.config[REGISTERED_SITE] for p, ins in told} == {
        "11": "cleveland", "12": "hungary", "13": "switzerland"}  # fmt: skip
    return recorder


def _reply(node_id: str, **fields: object) -> tuple[Site, FitRes]:
    metrics = FitReply(**fields).to_metrics()  # type: ignore[arg-type]
    weights = [w + 0.01 for w in GLOBAL]
    return Site(node_id), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 10, metrics)


def _head(key: str, seq: int) -> dict:
    return {"audit_key": key, "audit_seq": seq, "audit_hash": f"{seq:064x}"}


def test_the_coordinator_names_sites_by_key_and_drops_an_impostor(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    results = [
        _reply("11", site="cleveland", **_head("k-cle", 3)),
        _reply("12", site="hungary", **_head("k-hun", 3)),
        _reply("13", site="cleveland", **_head("k-swi", 3)),  # switzerland's key, kit edited
    ]
    parameters, _ = recorder.aggregate_fit(1, results, [])
    assert parameters is not None
    entries = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").open()]
    assert verify_log(tmp_path / "run" / "audit.jsonl").ok
    (mismatch,) = [e["payload"] for e in entries if e["kind"] == "identity-mismatch"]
    assert mismatch["site"] == "switzerland" and mismatch["node"] == "13"
    assert "registered to switzerland but replied as cleveland" in mismatch["reason"]
    (round_entry,) = [e["payload"] for e in entries if e["kind"] == "round"]
    assert round_entry["joined"] == ["cleveland", "hungary"]
    assert set(round_entry["site_heads"]) == {"cleveland", "hungary"}


def test_a_wrong_audit_key_or_an_unknown_node_is_dropped(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path)
    results = [
        _reply("11", site="cleveland", **_head("k-cle", 3)),
        _reply("12", site="hungary", **_head("k-hun", 3)),
        _reply("13", site="switzerland", **_head("fresh-key", 3)),
        _reply("99", site="va", **_head("k-va", 3)),
    ]
    recorder.aggregate_fit(1, results, [])
    events = recorder.run_dir.document["rounds"][0]["events"]
    reasons = {e["site"]: e["reason"] for e in events if e["kind"] == "identity-mismatch"}
    assert "not the one provisioned" in reasons["switzerland"]
    assert "not in the coordinator's registry" in reasons["node-99"]


def test_refusals_are_witnessed_and_a_contradicting_head_is_rejected(tmp_path: Path) -> None:
    witness = WitnessRecord(tmp_path / "witness.json", "heart", {
        "hungary": {"key": "k-hun", "seq": 5, "hash": f"{5:064x}"}})  # fmt: skip
    recorder = _recorder(tmp_path, witness)
    results = [
        _reply("11", site="cleveland", refused=True, reason="over budget", **_head("k-cle", 7)),
        _reply("12", site="hungary", **_head("k-hun", 4)),  # its log went back
        _reply("13", site="switzerland", **_head("k-swi", 2)),
    ]
    with pytest.raises(FederationStopped):  # one site left: recorded first, then stopped
        recorder.aggregate_fit(1, results, [])
    again = WitnessRecord.load(tmp_path / "witness.json", "heart")
    assert again.sites["cleveland"]["seq"] == 7  # the signed refusal is witnessed
    assert again.sites["hungary"]["seq"] == 5  # not moved back
    entries = [json.loads(line) for line in (tmp_path / "run" / "audit.jsonl").open()]
    (refusal,) = [e["payload"] for e in entries if e["kind"] == "refusal"]
    assert refusal["site_head"]["seq"] == 7
    (rejected,) = [e["payload"] for e in entries if e["kind"] == "rejected-update"]
    assert rejected["site"] == "hungary" and "went back" in rejected["reason"]


def test_a_deployed_run_without_the_identity_table_does_not_start(tmp_path: Path) -> None:
    from fedmed.config import FederationConfig
    from fedmed.errors import ConfigError
    from fedmed.server.app import node_identities

    config = FederationConfig(registered_sites=True, coordinator_home=str(tmp_path))
    with pytest.raises(ConfigError, match="no registry of node identities"):
        node_identities(config)
    assert node_identities(FederationConfig()) is None  # simulation: no table needed


def test_dp_noise_comes_from_the_site_secret_not_the_coordinator_seed(tmp_path: Path) -> None:
    """Same instructions (same coordinator seed): two homes with different secrets release
    different updates; a copy of one home (same secret, same ledger) releases the same."""
    import shutil

    from fedmed.deid.sitekey import SiteKey

    first = node(tmp_path / "a")
    SiteKey.load_or_create(tmp_path / "a")  # the secret exists before the copy is made
    shutil.copytree(tmp_path / "a", tmp_path / "a-copy")
    copy = node(tmp_path / "a-copy")
    other = node(tmp_path / "b")
    config = instructions()(1)
    updates = [client.fit(initial_weights(), config)[0] for client in (first, copy, other)]
    assert all(np.array_equal(a, b) for a, b in zip(updates[0], updates[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(updates[0], updates[2], strict=True))
