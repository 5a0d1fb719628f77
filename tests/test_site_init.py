"""``fedmed site init``: a home with the officer's policy, never overwritten."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedmed.cli import main
from fedmed.clients.site_home import SiteHome


def test_init_writes_the_policy_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "cleveland"
    args = ["site", "init", "--site-home", str(home), "--site", "cleveland", "--task", "heart"]
    assert main([*args, "--epsilon", "inf", "--delta", "1e-6"]) == 0
    policy = SiteHome(home, "cleveland").policy()
    assert math.isinf(policy.epsilon) and policy.delta == 1e-6
    assert policy.allowed_tasks == ("heart",)
    assert (home / "audit.jsonl").is_file() and (home / "ledger.json").is_file()
    before = (home / "ledger.json").read_bytes()
    capsys.readouterr()
    assert main([*args, "--epsilon", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (home / "ledger.json").read_bytes() == before
    assert main(["ledger", "show", "--site-home", str(home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budget"]["epsilon"] is None


def test_invalid_policy_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    home = tmp_path / "va"
    assert main(["site", "init", "--site-home", str(home), "--site", "va", "--task", "heart",
                 "--delta", "2"]) == 2  # fmt: skip
    assert not home.exists()


def test_names_with_quotes_and_backslashes_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site, task = 'st. "mary\'s" \\ north', 'heart"]\nepsilon = inf #\\'
    home = tmp_path / "home"
    assert main(["site", "init", "--site-home", str(home), "--site", site, "--task", task,
                 "--task", "*", "--epsilon", "2"]) == 0  # fmt: skip
    policy = SiteHome(home, site).policy()
    assert policy.allowed_tasks == (task, "*") and policy.epsilon == 2.0
    capsys.readouterr()
    assert main(["ledger", "show", "--site-home", str(home), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["site"] == site
