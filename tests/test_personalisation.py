"""Personalisation: normalisation layers kept at the sites (FedBN-style) and fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmed.cli import main
from fedmed.studies.fine_tuning import fine_tune
from fedmed.studies.generalization import check_regimes, default_strategies
from fedmed.tasks import get_task
from fedmed.training.local_norms import LocalNorms, norm_positions
from fedmed.training.loop import TrainSettings, get_weights, set_weights

SITES = ["academic", "legacy"]


def test_norm_positions_are_exactly_the_group_norm_entries() -> None:
    model = get_task("imaging-cls").build_model()
    keys = list(model.state_dict())
    positions = norm_positions(model)
    assert positions and all(".norm" in keys[p] for p in positions)
    expected = {k for k in keys if ".norm" in k}
    assert {keys[p] for p in positions} == expected
    assert norm_positions(get_task("heart").build_model()) == []


def test_local_norms_round_trip_and_refuse_a_foreign_model(tmp_path: Path) -> None:
    weights = get_weights(get_task("imaging-cls").build_model())
    positions = norm_positions(get_task("imaging-cls").build_model())
    store = LocalNorms.of(tmp_path, "run-1")
    assert store.load() == {}  # before the site's first round: the coordinator's values
    assert all(np.array_equal(a, b) for a, b in zip(store.apply(weights), weights, strict=True))
    mine = [w + 1.0 for w in weights]
    store.save(mine, positions)
    applied = store.apply(weights)
    for index, (got, base) in enumerate(zip(applied, weights, strict=True)):
        np.testing.assert_array_equal(got, base + 1.0 if index in positions else base)
    assert LocalNorms.of(tmp_path, "another run").load() == {}  # one store per run
    assert LocalNorms.of(tmp_path, "../../etc").path.parent == tmp_path / "personal"
    foreign = get_weights(get_task("heart").build_model())
    with pytest.raises(ValueError, match="does not fit the model received"):
        store.apply(foreign)


def test_fine_tuning_changes_only_the_copy_and_fits_the_site() -> None:
    pack = get_task("imaging-cls")
    site = pack.load_site("legacy", None, 0)
    torch.manual_seed(0)
    weights = get_weights(pack.build_model())
    settings = TrainSettings(local_epochs=1, batch_size=32, lr=0.1, seed=0)
    tuned = fine_tune(pack, weights, site, 2, settings, torch.device("cpu"))
    untrained = pack.build_model()
    set_weights(untrained, weights)
    device = torch.device("cpu")
    before = pack.evaluate(untrained, site.test, device)["auc"]
    assert pack.evaluate(tuned, site.test, device)["auc"] > before
    np.testing.assert_array_equal(get_weights(untrained)[0], weights[0])


def test_regimes_a_model_cannot_run_are_refused_before_training() -> None:
    heart = get_task("heart")
    assert "local-norm" not in default_strategies(heart)
    assert "local-norm" in default_strategies(get_task("ecg"))
    with pytest.raises(Exception, match="no normalisation layer"):
        check_regimes(heart, ["fedavg", "local-norm"], 0)
    with pytest.raises(Exception, match="add fedavg"):
        check_regimes(heart, ["fedprox"], 3)


@pytest.mark.timeout(600)
def test_local_norm_federation_keeps_each_sites_norms(repo: Path, tmp_path: Path) -> None:
    """Two rounds with DP: each site's GroupNorm entries stay in its home and score it."""
    out, homes = tmp_path / "run", tmp_path / "homes"
    args = [
        "run", str(repo / "examples" / "imaging-cls"), "--rounds", "2",
        "--sites-home", str(homes), "--out", str(out),
        "--set", "sites=" + ",".join(SITES), "--set", "local-norm=true", "--set", "explain=false",
    ]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    pack = get_task("imaging-cls")
    positions = norm_positions(pack.build_model())
    stored = {
        site: list((homes / site / "personal").glob("run-*-local-norm.npz")) for site in SITES
    }
    assert all(len(files) == 1 for files in stored.values())
    kept = {site: LocalNorms(files[0]).load() for site, files in stored.items()}
    assert sorted(kept["academic"]) == positions
    assert any(
        not np.allclose(kept["academic"][p], kept["legacy"][p]) for p in positions
    )  # each site trained its own
    global_model = pack.build_model()
    global_model.load_state_dict(torch.load(out / "model.pt"))
    device = torch.device("cpu")
    for site in SITES:
        personal = LocalNorms(stored[site][0]).apply(get_weights(global_model))
        model = pack.build_model()
        set_weights(model, personal)
        expected = pack.evaluate(model, pack.load_site(site, None, 0).test, device)
        assert metrics["final"]["per_site"][site]["auc"] == pytest.approx(expected["auc"])


def test_local_norm_on_a_model_without_norm_layers_is_a_clear_error(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "run", str(repo / "examples" / "heart"), "--rounds", "1",
        "--sites-home", str(tmp_path / "homes"), "--out", str(tmp_path / "run"),
        "--set", "local-norm=true",
    ]  # fmt: skip
    assert main(args) != 0
    assert "no normalisation layer" in capsys.readouterr().err
