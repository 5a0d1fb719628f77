"""The empirical privacy audit (``fedmed audit privacy``): its statistics by hand, and its
power on the heart federation through the command line — a clear lower bound without DP,
none above the accounted ε with DP at ε = 1 — and its section in the compliance report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedmed.cli import main
from fedmed.studies.canaries import quiet_directions
from fedmed.studies.canary_bound import (
    audit_bound,
    epsilon_lower_bound,
    p_value,
    two_groups,
)
from fedmed.studies.membership import logit_confidence, loss_attack

HEART = Path(__file__).resolve().parents[1] / "examples" / "heart"
# The smallest site and a quarter of the rounds keep each audit to a few seconds; with 5
# rounds the canaries separate as clearly as with 20 (without DP all 20 guesses right).
FAST = ["--site", "switzerland", "--rounds", "5"]


# The one-run bound (Steinke, Nasr & Jagielski 2023) on cases checked by hand ----------


def test_p_value_without_privacy_is_the_fair_coin_tail() -> None:
    # ε = 0: every guess is a fair coin, so 10 right out of 10 has probability 2^-10.
    assert p_value(10, 10, 10, 0.0, 0.0) == pytest.approx(2.0**-10)


def test_all_right_gives_the_randomized_response_epsilon() -> None:
    # 10 of 10 right: the bound is the ε whose accuracy q = e^ε / (1 + e^ε) makes q^10 = 5 %.
    q = 0.05 ** (1 / 10)
    assert epsilon_lower_bound(10, 10, 10) == pytest.approx(math.log(q / (1 - q)), abs=1e-6)


def test_bound_grows_with_right_guesses_and_vanishes_at_chance() -> None:
    assert epsilon_lower_bound(1000, 1000, 500) == 0.0
    assert epsilon_lower_bound(1000, 1000, 1000) > 5.0
    bounds = [epsilon_lower_bound(200, 100, v, 1e-5) for v in (60, 70, 80, 90)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]


def test_delta_only_loosens_the_bound() -> None:
    pure = epsilon_lower_bound(1000, 100, 90, 0.0)
    approximate = epsilon_lower_bound(1000, 100, 90, 1e-5)
    assert approximate <= pure and approximate == pytest.approx(pure, abs=0.05)
    assert epsilon_lower_bound(1000, 100, 90, 1e-2) < approximate


def test_audit_bound_guesses_from_scores_only() -> None:
    rng = np.random.default_rng(0)
    included = rng.random(40) < 0.5
    separated = np.where(included, 5.0, 0.0) + rng.normal(0, 0.1, 40)
    assert two_groups(separated) == included.sum()
    clear = audit_bound(separated, included, 1e-5)
    assert clear.correct == clear.guesses == 40 and clear.epsilon_lower_bound > 1.5
    noise = audit_bound(rng.normal(0, 1, 40), included, 1e-5)
    assert noise.epsilon_lower_bound < 0.5


# Membership inference and canaries ------------------------------------------------------


def test_loss_attack_auc_and_tpr_at_low_fpr() -> None:
    members, non_members = np.array([0.01, 0.02, 0.03]), np.array([1.0, 2.0, 3.0])
    perfect = loss_attack(members, non_members)
    assert (perfect.auc, perfect.tpr_at_low_fpr) == (1.0, 1.0)
    reversed_ = loss_attack(non_members, members)
    assert (reversed_.auc, reversed_.tpr_at_low_fpr) == (0.0, 0.0)


def test_logit_confidence_of_a_log_loss() -> None:
    confidence = logit_confidence(np.array([math.log(2), -math.log(0.9), 1e-12]))
    assert confidence[:2] == pytest.approx([0.0, math.log(9)])
    assert confidence[2] > 25  # still growing where the loss has flattened out


def test_quiet_directions_avoid_the_data() -> None:
    rng = np.random.default_rng(0)
    data = np.hstack([rng.normal(size=(50, 6)), np.zeros((50, 4))])  # 4 values never used
    directions = quiet_directions(data, 4)
    assert directions @ directions.T == pytest.approx(np.eye(4), abs=1e-9)
    assert np.abs(data @ directions.T).max() < 1e-9
    wide = rng.normal(size=(5, 40))  # fewer examples than values: orthogonal to each one
    assert np.abs(wide @ quiet_directions(wide, 10).T).max() < 1e-9


# Through the command line on the heart federation ----------------------------------------


def run_audit(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> dict[str, Any]:
    """``fedmed audit privacy examples/heart ... --json``: the printed document, which must
    be the one written to ``out/privacy-audit.json``."""
    code = main(["audit", "privacy", str(HEART), *FAST, "--json", "--out", str(out), *args])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "privacy-audit.json").read_text(encoding="utf-8"))
    return printed


def test_audit_without_dp_finds_a_clear_lower_bound(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    document = run_audit(capsys, tmp_path / "no-dp", "--no-dp")
    assert document["dp"]["enabled"] is False and document["confidence"] == 0.95
    found = document["per_site"]["switzerland"]
    assert found["epsilon_accounted"] is None  # unbounded: no noise
    assert found["epsilon_lower_bound"] > 0.5
    assert found["correct_guesses"] >= found["canaries"] - 1
    assert 0.0 <= found["mia_auc"] <= 1.0 and 0.0 <= found["tpr_at_0.1pct_fpr"] <= 1.0
    assert found["members"] > 0 and found["non_members"] > 0


def test_audit_at_epsilon_one_stays_below_the_accounted_epsilon(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "eps1"
    document = run_audit(capsys, out, "--epsilon", "1")
    found = document["per_site"]["switzerland"]
    assert document["dp"]["enabled"] is True and found["noise_multiplier"] > 0
    assert found["epsilon_accounted"] == pytest.approx(1.0, abs=0.05)
    assert found["epsilon_lower_bound"] <= found["epsilon_accounted"]
    # The report shows the audit beside the accounted ε of the audit's own ledger.
    report = tmp_path / "report.html"
    assert main(["audit", "report", str(out), "--out", str(report)]) == 0
    page = report.read_text(encoding="utf-8")
    assert "Empirical privacy audit" in page and f"{found['epsilon_lower_bound']:.3f}" in page
    data = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
    [audit] = data["privacy_audits"]
    assert audit["per_site"]["switzerland"]["epsilon_accounted"] == found["epsilon_accounted"]
    assert [site["site"] for site in data["sites"]] == ["switzerland"]


def test_audit_refuses_a_used_output_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "old.txt").write_text("x")
    assert main(["audit", "privacy", str(HEART), "--out", str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
