"""Three federations on one sites home (Ray simulation): ε composes, budgets refuse, all audited.

Budgets are chosen from the accountant so each step is decided with margin: each run
asks for ε = 0.5 per site over 2 rounds, so one run spends ≈ 0.50, two ≈ 0.70 and a
fifth round would reach ≈ 0.78. Cleveland, Hungary and Switzerland allow 0.74 (two
runs fit, the third is refused); VA allows 0.55 (its second run is refused while the
other three carry on).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from opacus.accountants import create_accountant

from fedmed.cli import main
from fedmed.clients.site_home import SiteHome
from fedmed.privacy.ledger import Ledger
from fedmed.privacy.policy import Policy

BUDGETS = {"cleveland": 0.74, "hungary": 0.74, "switzerland": 0.74, "va": 0.55}


def demo(out: Path, sites_home: Path, *extra: str) -> tuple[int, str, dict]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(["demo", "--rounds", "2", "--epsilon", "0.5", "--sites-home", str(sites_home),
                     "--out", str(out), "--set", "explain=false", *extra])
    metrics = json.loads((out / "metrics.json").read_text())
    return code, stdout.getvalue() + stderr.getvalue(), metrics


def ledgers(sites_home: Path) -> dict[str, Ledger]:
    return {site: Ledger.load(sites_home / site / "ledger.json") for site in BUDGETS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("federation")
    sites_home = base / "sites"
    for site, budget in BUDGETS.items():
        SiteHome.open(sites_home / site, site, "heart")
        (sites_home / site / "policy.toml").write_text(
            Policy(epsilon=budget, allowed_tasks=("heart",)).to_toml()
        )
    results = {"sites_home": sites_home, "base": base}
    with pytest.MonkeyPatch.context() as env:  # module scope: conftest's isolation is per test
        env.setenv("FEDMED_STATE", str(base / "state"))
        env.setenv("FLWR_HOME", str(base / "state" / "flwr"))
        results["first"] = demo(base / "run1", sites_home)
        results["after_first"] = {s: len(x.releases) for s, x in ledgers(sites_home).items()}
        results["second"] = demo(base / "run2", sites_home, "--client-dp")
        results["after_second"] = {s: len(x.releases) for s, x in ledgers(sites_home).items()}
        results["third"] = demo(base / "run3", sites_home)
    return results


def test_epsilon_composes_across_runs_and_budgets_refuse(runs: dict) -> None:
    code, _, first = runs["first"]
    assert code == 0
    for site in BUDGETS:
        assert 0.45 < first["privacy"][site]["epsilon"] <= 0.5
        assert first["privacy"][site]["delta"] == 1e-5
        assert first["privacy"][site]["rounds_joined"] == 2
    assert runs["after_first"] == dict.fromkeys(BUDGETS, 2)

    code, _, second = runs["second"]
    assert code == 0 and "stopped" not in second
    for site in ("cleveland", "hungary", "switzerland"):
        assert first["privacy"][site]["epsilon"] < second["privacy"][site]["epsilon"] <= 0.74
    assert second["privacy"]["va"]["rounds_refused"] == 2
    assert second["privacy"]["va"]["epsilon"] == first["privacy"]["va"]["epsilon"]
    refusals = [e for r in second["rounds"] for e in r["events"] if e["kind"] == "refusal"]
    assert [e["site"] for e in refusals] == ["va", "va"]
    assert "privacy budget" in refusals[0]["reason"]
    assert set(second["final"]["per_site"]) == set(BUDGETS)  # va still evaluates the model
    assert second["client_privacy"]["epsilon"] > 0 and second["client_privacy"]["delta"] == 1e-5
    assert runs["after_second"] == {**dict.fromkeys(BUDGETS, 4), "va": 2}

    code, output, third = runs["third"]
    assert code == 2
    assert "only 0 site(s) accepted, fewer than min-nodes 2; the run stops" in output
    assert third["stopped"]["round"] == 1
    assert {s: len(ledger.releases) for s, ledger in ledgers(runs["sites_home"]).items()} == (
        runs["after_second"]
    )


def test_every_recorded_epsilon_is_opacus_epsilon_of_the_history(runs: dict) -> None:
    for site, ledger in ledgers(runs["sites_home"]).items():
        assert ledger.releases, site
        for index, entry in enumerate(ledger.releases):
            accountant = create_accountant(mechanism=entry.accountant)
            accountant.history = [
                (e.noise_multiplier, e.sample_rate, e.steps) for e in ledger.releases[: index + 1]
            ]
            assert entry.epsilon_after == pytest.approx(accountant.get_epsilon(delta=entry.delta))
            assert entry.epsilon_after <= BUDGETS[site]


def test_all_logs_verify_and_record_refusals_and_rounds(runs: dict) -> None:
    base = runs["base"]
    assert main(["audit", "verify", str(base)]) == 0
    site_log = [json.loads(line) for line in (runs["sites_home"] / "va" / "audit.jsonl").open()]
    assert [e["kind"] for e in site_log].count("refusal") == 3
    log = base / "run2" / "audit" / "coordinator.jsonl"
    coordinator = [json.loads(line) for line in log.open()]
    kinds = [e["kind"] for e in coordinator]
    assert kinds[:2] == ["log-start", "run-start"] and kinds[-1] == "run-end"
    rounds = [e["payload"] for e in coordinator if e["kind"] == "round"]
    assert len(rounds) == 2 and rounds[0]["refused"] == ["va"]
    assert set(rounds[0]["site_heads"]) == {"cleveland", "hungary", "switzerland"}
    assert len(rounds[0]["model_sha256"]) == 64 and "client-epsilon" in rounds[0]
    assert coordinator[1]["payload"]["code"]["source_sha256"]
    stopped = [json.loads(line) for line in (base / "run3" / "audit" / "coordinator.jsonl").open()]
    assert stopped[-1]["kind"] == "run-end" and stopped[-1]["payload"]["status"].startswith(
        "stopped"
    )


def test_each_run_directory_holds_a_report_naming_every_site(runs: dict) -> None:
    for run in ("run1", "run2", "run3"):
        page = (runs["base"] / run / "report.html").read_text()
        data = json.loads((runs["base"] / run / "report.json").read_text())
        assert data["verification"]["ok"]
        for site in BUDGETS:
            assert f"<h2>{site}</h2>" in page
    assert "Rounds refused" in (runs["base"] / "run3" / "report.html").read_text()
