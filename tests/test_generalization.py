"""The generalization study: its table arithmetic, its throwaway site homes, one real run."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest

from fedmed.cli import build_parser, main
from fedmed.clients.site_home import SiteHome
from fedmed.commands.federation import federation_config
from fedmed.commands.generalization import _baselines_and_header
from fedmed.config import FederationConfig
from fedmed.deid.sitekey import SECRET_RELPATH, SiteKey
from fedmed.errors import ConfigError, DataError
from fedmed.studies.baselines import run_baselines
from fedmed.studies.generalization import study_site_homes, summarise, to_markdown
from fedmed.studies.recorded_baselines import BaselineRecipe, TrainedBaselines, load_recorded
from fedmed.tasks import get_task


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
    repo: Path, tmp_path: Path, isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    args = [
        "generalization", str(repo / "examples" / "heart"), "--seeds", "1",
        "--strategies", "fedavg", "--no-leave-one-out", "--rounds", "2",
        "--set", "sites=cleveland,hungary", "--set", "explain=false", "--out", str(out),
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

    dp_out = tmp_path / "study-dp"  # the same study with DP, borrowing the baselines above
    assert main([*args[:-1], str(dp_out), "--dp", "--baselines-from", str(out)]) == 0
    dp_raw = json.loads((dp_out / "generalization.json").read_text())
    dp_regimes = dp_raw["all_sites"]["0"]
    for borrowed in ("local cleveland", "local hungary", "pooled"):
        assert dp_regimes[borrowed] == regimes[borrowed]
    assert dp_regimes["fedavg"] != regimes["fedavg"]  # the federation itself ran again, noised
    # Its homes' secrets come from the seed and its run id from the run folder: run again,
    # the DP federation gives the same scores (docs/results.md's DP studies reproduce).
    again = tmp_path / "study-dp-again"
    assert main([*args[:-1], str(again), "--dp", "--baselines-from", str(out)]) == 0
    rerun = json.loads((again / "generalization.json").read_text())["all_sites"]["0"]
    assert rerun["fedavg"] == dp_regimes["fedavg"]
    run = json.loads((again / "runs" / "fedavg-seed0" / "metrics.json").read_text())
    assert run["run-id"] == "fedavg-seed0"
    assert dp_raw["baselines"] == raw["baselines"]
    assert dp_raw["baselines_from"]["study"] == str(out / "generalization.json")
    assert "ε = 1; local and pooled rows from study)" in dp_raw["title"]
    ledger = dp_out / "runs" / "fedavg-seed0" / "sites" / "cleveland"
    assert ledger.is_dir()  # a capped, DP-accounting home (see the homes test above)

    raw["all_sites"]["0"]["local cleveland"]["cleveland"]["accuracy"] -= 0.1  # a stale study
    (out / "generalization.json").write_text(json.dumps(raw))
    assert main([*args[:-1], str(tmp_path / "stale"), "--baselines-from", str(out)]) == 2
    assert "its local cleveland model (seed 0) scores differently" in capsys.readouterr().err

    # Each federation's coordinator (key, witness of the site logs) lives in its run, beside
    # the fresh site homes: the study run again into the same folder is not met by the
    # witness of the homes it replaced, and nothing is left in the state's coordinator home.
    assert (out / "runs" / "fedavg-seed0" / "coordinator" / "witness").is_dir()
    assert not (isolated_state / "coordinator").exists()
    assert main(args) == 0


@pytest.mark.timeout(480)  # four simulations; ~70 s on an idle machine, 184 s on a busy one
def test_leave_one_site_out_scores_each_held_out_site_with_models_that_never_saw_it(
    repo: Path, tmp_path: Path
) -> None:
    """The smallest leave-one-site-out study end to end: three sites, one seed, one round."""
    sites = ["cleveland", "hungary", "va"]
    out = tmp_path / "loso"
    args = [
        "generalization", str(repo / "examples" / "heart"), "--seeds", "1",
        "--strategies", "fedavg", "--fine-tune-epochs", "0", "--rounds", "1",
        "--set", f"sites={','.join(sites)}", "--set", "explain=false", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    raw = json.loads((out / "generalization.json").read_text())
    held_out = raw["leave_one_out"]["0"]
    assert sorted(held_out) == sorted(sites)
    for held in sites:
        assert set(held_out[held]) == {"fedavg", "pooled", "local-mean"}
        for scores in held_out[held].values():
            assert math.isfinite(scores["accuracy"]) and 0.0 <= scores["accuracy"] <= 1.0
        # The federation that is scored on the held-out site trained without it.
        run = json.loads((out / "runs" / f"loso-{held}-seed0" / "metrics.json").read_text())
        assert run["sites"] == [s for s in sites if s != held]
        assert held not in run["rounds"][-1]["fit"]
    assert "Leave-one-site-out" in (out / "generalization.md").read_text()


def _recipe(**changes: object) -> BaselineRecipe:
    recipe = BaselineRecipe("heart", ("x", "y"), "", 20, 16, 0.05, 0.0)
    return dataclasses.replace(recipe, **changes)


def _write_study(folder: Path, recipe: BaselineRecipe | None, with_held_out: bool) -> Path:
    runs = {"local x": _scores(0.9, 0.5), "local y": _scores(0.4, 0.8), **RAW["all_sites"]["0"]}
    held = {
        site: {"fedavg": {"accuracy": 0.5}, "pooled": {"accuracy": 0.6},
               "local-mean": {"accuracy": 0.4}}
        for site in ("x", "y")
    }  # fmt: skip
    document = {"all_sites": {"0": runs}, "leave_one_out": {"0": held} if with_held_out else {}}
    if recipe is not None:
        document["baselines"] = recipe.to_json()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generalization.json").write_text(json.dumps(document))
    return folder / "generalization.json"


def test_recorded_baselines_give_exactly_the_local_and_pooled_rows(tmp_path: Path) -> None:
    path = _write_study(tmp_path, _recipe(), with_held_out=True)
    source = load_recorded(path, _recipe(), [0], True, pytest.fail)
    assert set(source.all_sites(0)) == {"local x", "local y", "pooled"}  # not its fedavg
    assert source.held_out(0, "y") == {"pooled": {"accuracy": 0.6}, "local-mean": {"accuracy": 0.4}}
    assert source.provenance()["study"] == str(path) and len(source.provenance()["sha256"]) == 64


@pytest.mark.parametrize(
    ("recipe", "seeds", "held_out", "message"),
    [
        (_recipe(lr=0.1), [0], False, "lr 0.05 there, 0.1 here"),
        (_recipe(sites=("x", "z")), [0], False, "sites ['x', 'y'] there, ['x', 'z'] here"),
        (_recipe(), [0, 1], False, "no baselines for seed(s) [1]"),
        (_recipe(), [0], True, "no leave-one-site-out rows for seed 0"),
    ],
)
def test_a_study_trained_differently_is_refused_with_the_difference(
    tmp_path: Path, recipe: BaselineRecipe, seeds: list[int], held_out: bool, message: str
) -> None:
    path = _write_study(tmp_path, _recipe(), with_held_out=False)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_recorded(path, recipe, seeds, held_out, pytest.fail)
    assert str(path) in str(caught.value)


def test_an_older_study_without_a_recipe_is_checked_for_sites_and_seeds_with_a_warning(
    tmp_path: Path,
) -> None:
    path = _write_study(tmp_path, None, with_held_out=False)
    warnings: list[str] = []
    load_recorded(path, _recipe(), [0], False, warnings.append)
    assert warnings and "does not record how its baselines were trained" in warnings[0]
    with pytest.raises(ConfigError, match="has local models of"):
        load_recorded(path, _recipe(sites=("x", "y", "z")), [0], False, warnings.append)


def test_baselines_from_a_folder_without_a_study_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="generalization.json: not a fedmed generalization study"):
        load_recorded(tmp_path / "generalization.json", _recipe(), [0], False, pytest.fail)


def test_report_names_a_folder_that_is_not_a_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "generalization.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    assert "generalization.json: not a fedmed generalization study" in capsys.readouterr().err


def test_held_out_local_mean_reuses_the_all_sites_models_exactly() -> None:
    """Leave-one-site-out trains only the pooled model of the other sites: their local
    models are the all-sites ones, so the row must equal training them again."""
    pack = get_task("heart")
    recipe = BaselineRecipe("heart", ("cleveland", "hungary", "switzerland"), "", 3, 16, 0.05, 0.0)
    trained = TrainedBaselines(pack, recipe)
    row = trained.held_out(0, "switzerland")
    others = ["cleveland", "hungary"]
    again = run_baselines(pack, others, None, 3, recipe.settings(0), ["switzerland"]).scores
    assert row["pooled"] == again["pooled"]["switzerland"]
    for metric, value in row["local-mean"].items():
        assert value == pytest.approx((again[others[0]]["switzerland"][metric]
                                       + again[others[1]]["switzerland"][metric]) / 2)


def test_a_dp_studys_baselines_train_as_the_study_without_dp(repo: Path) -> None:
    """``--dp`` brings deid-ner's DP recipe (a steps-per-epoch cap) into the federations, not
    into the local and pooled models: their recipe is the no-DP study's, so it can lend them."""
    folder = str(repo / "examples" / "deid-ner")
    recipes = []
    for flag in ("--no-dp", "--dp"):
        args = build_parser().parse_args(["generalization", folder, flag])
        config = federation_config(args.federation, args)
        recipes.append(_baselines_and_header(args, config, [0])[1]["baselines"])
        assert config.steps_per_epoch == (6 if config.dp else None)
    assert recipes[0] == recipes[1] and "steps_per_epoch" not in recipes[1]


def test_study_homes_hold_secrets_derived_from_site_and_seed(tmp_path: Path) -> None:
    """What makes a DP study's noise reproducible (a real site's secret is random)."""
    for seed, folder in ((0, "a"), (0, "b"), (1, "c")):
        study_site_homes(FederationConfig(task="heart", sites="va", seed=seed), tmp_path / folder)
    keys = {folder: SiteKey.load_or_create(tmp_path / folder / "va").fingerprint
            for folder in "abc"}
    assert keys["a"] == keys["b"] != keys["c"]
    assert oct((tmp_path / "a" / "va" / SECRET_RELPATH).stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="already holds a site secret"):
        SiteKey.create_derived(tmp_path / "a" / "va", "anything")


@pytest.mark.parametrize("run_id", ["has space", "a/b", "x" * 65])
def test_a_fixed_run_id_must_be_a_plain_name(run_id: str) -> None:
    with pytest.raises(ConfigError, match="run-id"):
        FederationConfig.from_run_config({"task": "heart", "run-id": run_id})
