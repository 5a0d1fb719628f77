"""``dp-recipe``: with DP on, a pack's measured DP-SGD settings fill what the federation leaves
out, through the same parsing ``fedmed run`` and the coordinator use (fedmed.dp_recipes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmed.cli import build_parser
from fedmed.commands.federation import federation_config
from fedmed.config import FederationConfig
from fedmed.dp_recipes import RECIPE_SETTINGS, RECIPES
from fedmed.errors import ConfigError
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task

TASK = "imaging-cls"


def instructions(folder: Path, *argv: str) -> dict:
    """Round 1's training instructions of the coordinator for ``fedmed run FOLDER ARGV``."""
    args = build_parser().parse_args(["run", str(folder), *argv])
    config = federation_config(args.federation, args)
    return fit_config_fn(config, get_task(config.task))(1)


def test_the_examples_recipe_reaches_the_coordinators_round_instructions(repo: Path) -> None:
    recipe, pack = RECIPES[TASK], get_task(TASK)
    assert recipe["batch-size"] != pack.default_batch_size and recipe["lr"] != pack.default_lr
    folder = repo / "examples" / TASK  # leaves batch-size, lr and clip-norm to the recipe
    sent = instructions(folder)
    assert (sent["batch-size"], sent["lr"]) == (recipe["batch-size"], recipe["lr"])
    assert sent["dp-clip-norm"] == recipe["clip-norm"]
    # A value given on the command line (or in the folder) wins over the recipe.
    assert instructions(folder, "--set", "lr=0.3")["lr"] == 0.3
    # Without DP, or with dp-recipe = none, the pack's plain defaults stand.
    plain = instructions(folder, "--no-dp")
    assert (plain["batch-size"], plain["lr"]) == (pack.default_batch_size, pack.default_lr)
    off = instructions(folder, "--set", "dp-recipe=none")
    assert (off["batch-size"], off["lr"]) == (pack.default_batch_size, pack.default_lr)


def test_every_recipe_names_a_pack_and_only_training_settings() -> None:
    for task, recipe in RECIPES.items():
        config = FederationConfig.from_run_config({"task": task})
        get_task(config.task)  # a registered pack
        assert set(recipe) <= set(RECIPE_SETTINGS), task
        for key, value in recipe.items():
            assert getattr(config, key.replace("-", "_")) == value, (task, key)


def test_a_bad_dp_recipe_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="dp-recipe must be one of measured, none"):
        FederationConfig.from_run_config({"task": "ecg", "dp-recipe": "fast"})


def test_deid_ners_recipe_caps_steps_above_the_packs_batch(repo: Path) -> None:
    """The example leaves the batch to the recipe: every node gets batch 32 as the floor and
    at most 6 steps an epoch (``TrainSettings.batch_for``); without DP, no cap."""
    folder = repo / "examples" / "deid-ner"
    sent = instructions(folder)
    assert (sent["batch-size"], sent["steps-per-epoch"], sent["lr"]) == (32, 6, 0.02)
    assert instructions(folder, "--no-dp")["steps-per-epoch"] == 0
    assert instructions(folder, "--set", "batch-size=64")["steps-per-epoch"] == 0
