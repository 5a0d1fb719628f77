"""``steps-per-epoch``: each site's batch follows its size, from the run config through the
coordinator's round instructions to the node's DP-SGD and its ledger (fedmed.training.loop)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmed import dp_recipes
from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.privacy.ledger import Ledger
from fedmed.privacy.trainer import poisson_schedule
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings
from tests.test_privacy_node import initial_weights


@pytest.mark.parametrize(("examples", "batch"), [(137, 35), (1083, 271), (64, 32), (3, 32)])
def test_a_large_sites_batch_splits_its_examples_into_at_most_n_steps(
    examples: int, batch: int
) -> None:
    settings = TrainSettings(local_epochs=1, batch_size=32, lr=0.1, steps_per_epoch=4)
    assert settings.batch_for(examples) == batch  # never below batch-size, the floor
    assert poisson_schedule(examples, batch)[1] <= 4
    # Without the setting every site trains in the batch it was given.
    assert TrainSettings(local_epochs=1, batch_size=32, lr=0.1).batch_for(examples) == 32


def test_a_steps_per_epoch_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="steps-per-epoch must be >= 1, got 0"):
        FederationConfig.from_run_config({"task": "heart", "steps-per-epoch": 0})
    with pytest.raises(ConfigError, match="steps-per-epoch -1"):
        TrainSettings(local_epochs=1, batch_size=32, lr=0.1, steps_per_epoch=-1)


def test_a_recipes_batch_stands_down_for_a_batch_given_either_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(dp_recipes.RECIPES, "heart", {"steps-per-epoch": 4, "lr": 0.5})
    recipe = FederationConfig.from_run_config({"task": "heart"})
    assert (recipe.steps_per_epoch, recipe.batch_size, recipe.lr) == (4, None, 0.5)
    for given in ({"batch-size": 8}, {"batch_size": 8}):
        config = FederationConfig.from_run_config({"task": "heart", **given})
        assert (config.steps_per_epoch, config.batch_size, config.lr) == (None, 8, 0.5)
    monkeypatch.setitem(dp_recipes.RECIPES, "heart", {"batch-size": 64, "lr": 0.5})
    config = FederationConfig.from_run_config({"task": "heart", "steps-per-epoch": 2})
    assert (config.steps_per_epoch, config.batch_size) == (2, None)


def test_the_node_trains_and_accounts_the_batch_its_size_gives(tmp_path: Path) -> None:
    """Through the coordinator's instructions and ``HospitalClient.fit``: the ledger records
    the sampling rate of ceil(n / steps) at this site (above the batch-size floor of 4), and
    Opacus ran exactly that."""
    site = "switzerland"
    SiteHome.open(tmp_path / "home", site, "heart")
    client = HospitalClient(HospitalSite.open("heart", site, None, 0), tmp_path / "home")
    config = FederationConfig.from_run_config(
        {"task": "heart", "num-server-rounds": 2, "steps-per-epoch": 3, "batch-size": 4,
         "epsilon": 1.0}
    )
    sent = fit_config_fn(config, get_task("heart"), "run-1")(1)
    assert (sent["steps-per-epoch"], sent["batch-size"]) == (3, 4)
    _, count, reply = client.fit(initial_weights(), sent)
    assert reply["refused"] == 0
    (release,) = Ledger.load(tmp_path / "home" / "ledger.json").releases
    rate, steps = poisson_schedule(count, -(-count // 3))
    assert (release.sample_rate, release.steps) == (rate, steps) == (1 / 3, 3)
