"""A ledger that cannot be reset by deleting the site home (issue 13, hole 4).

The coordinator keeps the last audit-log head it witnessed for each site and sends it
back every round; a node whose log no longer holds that head (home deleted, reset, or
restored from an older copy) refuses to train. Fast tests drive the node directly (no
Ray); one test runs two federations through ``fedmed run`` on the Simulation Engine.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from test_privacy_node import SITE, assert_refused, initial_weights, instructions, node

from fedmed.cli import main
from fedmed.clients.hospital import HospitalClient
from fedmed.errors import ConfigError
from fedmed.privacy.ledger import Ledger
from fedmed.privacy.reply import WITNESSED_HEADS, encode_witnessed, witnessed_head
from fedmed.server.witness import WitnessRecord
from fedmed.state import sites_home_path, witness_record_path

RESTORE = "deleted, reset or restored from an older copy"


def log_entries(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit.jsonl").open()]


def trained_round(client: HospitalClient, server_round: int = 1) -> dict:
    """One accepted round without a witness; its reply metrics (with the audit head)."""
    _, count, metrics = client.fit(initial_weights(), instructions(rounds=5)(server_round))
    assert metrics["refused"] == 0 and count > 0, metrics
    return metrics


def with_witness(server_round: int, seq: int, digest: str) -> dict:
    return {
        **instructions(rounds=5)(server_round),
        WITNESSED_HEADS: encode_witnessed({SITE: {"seq": seq, "hash": digest}, "va": {
            "seq": 99, "hash": "f" * 64}}),
    }


def test_a_log_holding_the_witnessed_head_trains_even_when_longer(tmp_path: Path) -> None:
    client = node(tmp_path / "home")
    first = trained_round(client, 1)
    trained_round(client, 2)  # the log grew past what was witnessed: that is allowed
    for server_round in (3, 4):
        config = with_witness(server_round, int(first["audit-seq"]), str(first["audit-hash"]))
        _, count, metrics = client.fit(initial_weights(), config)
        assert metrics["refused"] == 0 and count > 0, metrics
        first = metrics
    assert len(Ledger.load(tmp_path / "home" / "ledger.json").releases) == 4


def test_a_deleted_home_refuses_and_records_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    client = node(home)
    head = trained_round(client)
    shutil.rmtree(home)
    config = with_witness(2, int(head["audit-seq"]), str(head["audit-hash"]))
    metrics = assert_refused(client, config, RESTORE)
    assert "did not exist" in str(metrics["reason"])
    assert "epsilon" not in metrics  # the reset ledger's ε 0 is not reported as the site's ε
    # The home was made only to sign the refusal: nothing released, and it stays refused.
    assert Ledger.load(home / "ledger.json").releases == []
    assert [e["kind"] for e in log_entries(home)][-1] == "refusal"
    for server_round in (3, 4, 5):
        assert_refused(client, with_witness(server_round, int(head["audit-seq"]),
                                            str(head["audit-hash"])), RESTORE)
    assert Ledger.load(home / "ledger.json").releases == []
    assert not [e for e in log_entries(home) if e["kind"] == "dp-release"]


def test_a_home_restored_from_an_older_copy_refuses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    client = node(home)
    trained_round(client, 1)
    shutil.copytree(home, tmp_path / "backup")
    head = trained_round(client, 2)
    shutil.rmtree(home)
    shutil.copytree(tmp_path / "backup", home)  # a consistent but older home: log shorter
    metrics = assert_refused(
        client, with_witness(3, int(head["audit-seq"]), str(head["audit-hash"])), RESTORE
    )
    assert f"seq {head['audit-seq']}" in str(metrics["reason"])
    assert len(Ledger.load(home / "ledger.json").releases) == 1


def test_a_log_with_another_entry_at_the_witnessed_seq_refuses(tmp_path: Path) -> None:
    home = tmp_path / "home"
    client = node(home)
    head = trained_round(client)
    shutil.rmtree(home)
    node(home)  # a new home, trained as far: same length, other entries
    trained_round(client)
    metrics = assert_refused(
        client, with_witness(2, int(head["audit-seq"]), str(head["audit-hash"])), RESTORE
    )
    assert "another entry" in str(metrics["reason"])
    assert len(Ledger.load(home / "ledger.json").releases) == 1


def test_a_malformed_witness_is_refused(tmp_path: Path) -> None:
    client = node(tmp_path / "home")
    config = {**instructions()(1), WITNESSED_HEADS: '{"switzerland": {"seq": "x"}}'}
    assert_refused(client, config, WITNESSED_HEADS)
    assert witnessed_head({WITNESSED_HEADS: '{"va": {"seq": 3, "hash": "ab"}}'}, SITE) is None
    with pytest.raises(ConfigError):
        witnessed_head({WITNESSED_HEADS: "[1]"}, SITE)


def test_the_witness_record_is_kept_per_federation_and_fails_closed(tmp_path: Path) -> None:
    path = witness_record_path(tmp_path / "coordinator", "heart")
    assert path == tmp_path / "coordinator" / "witness" / "heart.json"
    coordinator = tmp_path / "coordinator"
    assert witness_record_path(coordinator, "heart", str(sites_home_path("heart"))) == path
    assert witness_record_path(coordinator, "heart", str(tmp_path / "homes")) != path
    record = WitnessRecord.load(path, "heart")
    assert record.fit_config() == {}
    record.witness({"va": {"key": "k", "seq": 4, "hash": "ab"}}, "run-1", 1)
    again = WitnessRecord.load(path, "heart")
    assert witnessed_head(again.fit_config(), "va") is not None
    assert again.sites["va"]["seq"] == 4
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="witness record is unreadable"):
        WitnessRecord.load(path, "heart")


def run_heart(out: Path, rounds: int) -> tuple[int, dict]:
    stdout = io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stdout):
        code = main([
            "run", "examples/heart", "--rounds", str(rounds), "--out", str(out),
            "--set", "sites=cleveland,hungary,switzerland", "--set", "explain=false",
        ])  # fmt: skip
    return code, json.loads((out / "metrics.json").read_text())


@pytest.mark.timeout(300)
def test_a_deleted_site_home_refuses_every_round_of_the_next_run(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    homes = sites_home_path("heart")
    code, first = run_heart(tmp_path / "run1", 1)
    assert code == 0
    assert {s: first["privacy"][s]["rounds_joined"] for s in first["privacy"]} == {
        "cleveland": 1, "hungary": 1, "switzerland": 1}
    shutil.rmtree(homes / "switzerland")

    code, second = run_heart(tmp_path / "run2", 2)
    assert code == 0
    privacy = second["privacy"]
    assert privacy["switzerland"]["rounds_refused"] == 2
    assert privacy["switzerland"]["rounds_joined"] == 0
    assert privacy["cleveland"]["rounds_joined"] == privacy["hungary"]["rounds_joined"] == 2
    assert Ledger.load(homes / "switzerland" / "ledger.json").releases == []
    assert len(Ledger.load(homes / "cleveland" / "ledger.json").releases) == 3
    reasons = [e["reason"] for r in second["rounds"] for e in r.get("events", [])
               if e.get("kind") == "refusal" and e.get("site") == "switzerland"]
    assert len(reasons) == 2 and all(RESTORE in reason for reason in reasons)
