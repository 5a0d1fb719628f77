"""The signed log is the source of truth (issue 13, hole 2): a ledger edited by hand is
caught by the node, `fedmed audit verify` and `fedmed ledger show`; policy changes are
signed into the chain and listed in the compliance report. No Ray: direct node rounds."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from test_privacy_node import SITE, assert_refused, initial_weights, instructions, node

from fedmed.cli import main
from fedmed.privacy.policy import Policy


def log_entries(home: Path) -> list[dict]:
    return [json.loads(line) for line in (home / "audit.jsonl").open()]


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


def edit_ledger(home: Path, edit: Callable[[list[dict]], None]) -> None:
    document = json.loads((home / "ledger.json").read_text())
    edit(document["releases"])
    (home / "ledger.json").write_text(json.dumps(document, indent=1))


def reset(releases: list[dict]) -> None:
    releases.clear()


def lower_epsilon(releases: list[dict]) -> None:
    releases[0]["epsilon_after"] = releases[0]["epsilon_after"] / 10


def more_noise(releases: list[dict]) -> None:
    releases[0]["noise_multiplier"] = releases[0]["noise_multiplier"] * 4


def unsigned_extra(releases: list[dict]) -> None:
    releases.append({**releases[0], "round": 7})


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (reset, "signed in the audit log but missing from the ledger"),
        (lower_epsilon, "epsilon_after ledger"),
        (more_noise, "noise_multiplier ledger"),
        (unsigned_extra, "has no signed dp-release entry"),
    ],
)
def test_an_edited_ledger_is_refused_signed_and_fails_verify_and_ledger_show(
    tmp_path: Path, edit: Callable[[list[dict]], None], why: str
) -> None:
    home = tmp_path / "home"
    client = node(home)
    _, count, first = client.fit(initial_weights(), instructions()(1))
    assert first["refused"] == 0 and count > 0
    assert cli("audit", "verify", str(home))[0] == 0  # untouched, the two agree
    code, out = cli("ledger", "show", "--site-home", str(home), "--json")
    assert code == 0 and json.loads(out)["spent"]["epsilon"] == pytest.approx(first["epsilon"])
    edit_ledger(home, edit)
    ledger_after_edit = (home / "ledger.json").read_bytes()

    metrics = assert_refused(client, instructions()(2), "disagrees with the signed audit log")
    assert why in str(metrics["reason"])
    assert metrics["epsilon"] == pytest.approx(first["epsilon"])  # from the signed log
    last = log_entries(home)[-1]
    assert last["kind"] == "refusal" and why in last["payload"]["reason"]
    assert [e["kind"] for e in log_entries(home)].count("dp-release") == 1
    assert (home / "ledger.json").read_bytes() == ledger_after_edit  # never "repaired"

    code, out = cli("audit", "verify", str(home))
    assert code == 1
    assert f"site {SITE}: ledger.json disagrees with the signed dp-release entries" in out
    assert "release 1 (run 'run-1' round 1)" in out or "ledger release 2" in out
    code, out = cli("ledger", "show", "--site-home", str(home))
    assert code != 0 and "disagrees with the signed dp-release entries" in out


def test_a_raised_budget_is_a_signed_policy_change_listed_in_the_report(tmp_path: Path) -> None:
    home = tmp_path / "sites" / SITE
    client = node(home)
    client.fit(initial_weights(), instructions()(1))
    client.fit(initial_weights(), instructions()(2))  # same policy: no new entry
    (home / "policy.toml").write_text(Policy(epsilon=50.0, allowed_tasks=("heart",)).to_toml())
    _, _, metrics = client.fit(initial_weights(), instructions()(3))
    assert metrics["refused"] == 0 and metrics["epsilon-budget"] == 50.0

    changes = [e for e in log_entries(home) if e["kind"] == "policy-change"]
    assert len(changes) == 2
    assert changes[0]["payload"]["previous_sha256"] is None
    assert changes[0]["payload"]["epsilon"] == 10.0
    raised = changes[1]["payload"]
    assert (raised["previous_epsilon"], raised["epsilon"]) == (10.0, 50.0)
    assert raised["previous_sha256"] == changes[0]["payload"]["sha256"] != raised["sha256"]

    out = tmp_path / "report.html"
    assert cli("audit", "report", str(tmp_path / "sites"), "--out", str(out))[0] == 0
    data = json.loads(out.with_suffix(".json").read_text())
    (site,) = data["sites"]
    assert [(c["previous_epsilon"], c["epsilon"]) for c in site["policy_changes"]] == [
        (None, 10.0), (10.0, 50.0)
    ]
    assert site["policy_changes"][1]["time"] == changes[1]["time"]
    assert "Policy changes (signed)" in out.read_text()


def test_the_report_shows_epsilon_from_the_signed_entries_when_the_ledger_was_reset(
    tmp_path: Path,
) -> None:
    home = tmp_path / "sites" / SITE
    client = node(home)
    _, _, metrics = client.fit(initial_weights(), instructions()(1))
    edit_ledger(home, reset)
    out = tmp_path / "report.html"
    assert cli("audit", "report", str(tmp_path / "sites"), "--out", str(out))[0] == 1
    (site,) = json.loads(out.with_suffix(".json").read_text())["sites"]
    assert site["spent_epsilon"] == pytest.approx(metrics["epsilon"]) and site["releases"]
    assert any("disagrees with the signed audit log" in p for p in site["problems"])
