"""The generalization study: its table arithmetic, its throwaway site homes, one real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedmed.cli import main
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.generalization import study_site_homes, summarise, to_markdown


def _scores(a: float, b: float) -> dict[str, dict[str, float]]:
    return {"x": {"accuracy": a}, "y": {"accuracy": b}}


RAW = {
    "all_sites": {
        "0": {"pooled": _scores(0.8, 0.6), "fedavg": _scores(0.7, 0.5)},
        "1": {"pooled": _scores(0.6, 0.6), "fedavg": _scores(0.9, 0.7)},
    },
    "leave_one_out": {
        "0": {"x": {"fedavg": {"accuracy": 0.5}}, "y": {"fedavg": {"accuracy": 0.4}}},
        "1": {"x": {"fedavg": {"accuracy": 0.7}}, "y": {"fedavg": {"accuracy": 0.6}}},
    },
}


def test_summary_is_mean_and_std_over_seeds_per_site_and_over_sites() -> None:
    summary = summarise(RAW, "accuracy")
    assert summary["seeds"] == 2 and summary["sites"] == ["x", "y"]
    assert summary["table"]["pooled"]["x"] == pytest.approx((0.7, 0.1))
    assert summary["table"]["fedavg"]["mean"] == pytest.approx((0.7, 0.1))  # (0.6, 0.8)
    assert summary["leave_one_out"]["y"]["fedavg"] == pytest.approx((0.5, 0.1))
    markdown = to_markdown(summary, "demo")
    assert "| fedavg | 0.800 ± 0.100 | 0.600 ± 0.100 | 0.700 ± 0.100 |" in markdown
    assert "Leave-one-site-out" in markdown


def test_undefined_metrics_are_left_out_and_shown_as_na() -> None:
    raw = {
        "all_sites": {
            "0": {"pooled": {"x": {"auc": 0.8}, "y": {"auc": None}}},
            "1": {"pooled": {"x": {"auc": 0.6}, "y": {"auc": None}}},
        },
        "leave_one_out": {},
    }
    summary = summarise(raw, "auc")
    assert summary["table"]["pooled"]["mean"] == pytest.approx((0.7, 0.1))  # x alone
    markdown = to_markdown(summary, "demo")
    assert "| pooled | 0.700 ± 0.100 | n/a | 0.700 ± 0.100 |" in markdown
    assert "n/a: auc is undefined" in markdown


def test_summary_without_leave_one_out_has_one_table() -> None:
    raw = {"all_sites": RAW["all_sites"], "leave_one_out": {}}
    markdown = to_markdown(summarise(raw, "accuracy"), "demo")
    assert "| pooled |" in markdown and "Leave-one-site-out" not in markdown


@pytest.mark.parametrize(("dp", "capped"), [(False, False), (True, True)])
def test_study_homes_are_fresh_and_uncapped_only_without_dp(
    tmp_path: Path, dp: bool, capped: bool
) -> None:
    config = FederationConfig(task="heart", sites="cleveland,va", dp=dp)
    study_site_homes(config, tmp_path)
    policy = SiteHome(tmp_path / "va", "va").policy()
    assert math.isinf(policy.epsilon) != capped and policy.allowed_tasks == ("heart",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cleveland", "va"]


@pytest.mark.timeout(300)
def test_study_command_runs_real_federations_without_touching_real_homes(
    repo: Path, tmp_path: Path, isolated_state: Path
) -> None:
    out = tmp_path / "study"
    args = [
        "generalization", str(repo / "examples" / "heart"), "--seeds", "1",
        "--strategies", "fedavg", "--no-leave-one-out", "--rounds", "2",
        "--set", "sites=cleveland,hungary", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    raw = json.loads((out / "generalization.json").read_text())
    regimes = raw["all_sites"]["0"]
    assert set(regimes) == {"local cleveland", "local hungary", "pooled", "fedavg", "fine-tuned"}
    assert 0.5 < regimes["fedavg"]["cleveland"]["accuracy"] <= 1.0
    assert "heart (no DP)" in (out / "generalization.md").read_text()
    assert (out / "generalization-accuracy.png").stat().st_size > 10_000
    (out / "generalization.md").unlink()
    assert main(["report", str(out)]) == 0  # re-rendered from the JSON alone
    assert "| fedavg |" in (out / "generalization.md").read_text()
    assert not (isolated_state / "sites").exists()  # the federation's own homes untouched


def test_report_names_a_folder_that_is_not_a_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "generalization.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    assert "generalization.json: not a fedmed generalization study" in capsys.readouterr().err
