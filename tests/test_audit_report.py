"""The compliance report from site homes written by real node rounds (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fedmed.cli import main
from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.privacy.policy import Policy
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.training.loop import get_weights

SITES = ("switzerland", "va")


def train_sites(homes: Path) -> None:
    """Two rounds at each site; VA's small budget makes it refuse the second."""
    pack = get_task("heart")
    instructions = fit_config_fn(FederationConfig(num_server_rounds=2), pack, "run-x")
    torch.manual_seed(0)
    weights = get_weights(pack.build_model())
    for site in SITES:
        SiteHome.open(homes / site, site, "heart")
        if site == "va":
            (homes / site / "policy.toml").write_text(
                Policy(epsilon=0.8, allowed_tasks=("heart",)).to_toml()
            )
        client = HospitalClient(HospitalSite.open("heart", site, None, 0), homes / site)
        for server_round in (1, 2):
            client.fit(weights, instructions(server_round))


def test_report_lists_every_site_with_budget_releases_and_refusals(tmp_path: Path) -> None:
    train_sites(tmp_path / "sites")
    out = tmp_path / "report" / "report.html"
    assert main(["audit", "report", str(tmp_path / "sites"), "--out", str(out)]) == 0
    page = out.read_text()
    data = json.loads(out.with_suffix(".json").read_text())
    assert "All audit logs are intact" in page and "What ε (epsilon) means" in page
    assert "data:image/png;base64," in page
    by_site = {s["site"]: s for s in data["sites"]}
    assert set(by_site) == set(SITES)
    for site in SITES:
        assert f"<h2>{site}</h2>" in page
    assert by_site["switzerland"]["rounds_joined"] == 2 and by_site["va"]["rounds_refused"] == 1
    assert by_site["va"]["policy"]["epsilon"] == 0.8
    assert by_site["va"]["spent_epsilon"] <= 0.8 and not by_site["va"]["problems"]
    assert "privacy budget" in by_site["va"]["refusals"][0]["reason"]


def test_report_flags_a_tampered_log(tmp_path: Path) -> None:
    train_sites(tmp_path / "sites")
    log = tmp_path / "sites" / "va" / "audit.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"round":2', b'"round":3', 1))
    out = tmp_path / "report.html"
    assert main(["audit", "report", str(tmp_path / "sites"), "--out", str(out)]) == 1
    assert "Audit verification FAILED" in out.read_text()
