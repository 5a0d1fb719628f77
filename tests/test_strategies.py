"""Every registered aggregation strategy: the registry's contract, and a short federation
per strategy through ``fedmed run`` on Flower's real Simulation Engine (no mocks).

The end-to-end runs are small (heart, four sites, two rounds, the examples' default
DP-SGD) but would catch a strategy that no longer builds, aggregates nothing, drops
sites or fails to change the model; the registry test checks that each name builds
the Flower strategy it stands for, which a federation's scores alone cannot show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import ndarrays_to_parameters
from flwr.server.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
)

from fedmed.cli import build_parser, main
from fedmed.config import (
    FederationConfig,
    get_strategy,
    register_strategy,
    strategy_names,
)
from fedmed.errors import ConfigError
from fedmed.outputs import load_checkpoint
from fedmed.server.strategies import ClientLevelDP, build_strategy
from fedmed.tasks import get_task
from fedmed.training.loop import get_weights

SITES = ["cleveland", "hungary", "switzerland", "va"]
FLOWER_CLASSES = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedavgm": FedAvgM,
    "fedtrimmedavg": FedTrimmedAvg,
    "fedmedian": FedMedian,
}


def _built(config: FederationConfig) -> object:
    weights = get_weights(get_task("heart").build_model())
    return build_strategy(
        config, num_sites=4, initial_parameters=ndarrays_to_parameters(weights),
        on_fit_config_fn=lambda _: {},
    )  # fmt: skip


def test_the_seven_flower_strategies_are_registered_and_the_cli_offers_exactly_those() -> None:
    assert strategy_names() == tuple(FLOWER_CLASSES)
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    choices = next(a.choices for a in run._actions if a.dest == "strategy")
    assert tuple(choices) == strategy_names()


@pytest.mark.parametrize("name", list(FLOWER_CLASSES))
def test_each_name_builds_its_flower_strategy(name: str) -> None:
    strategy = _built(FederationConfig(strategy=name, proximal_mu=0.3, server_lr=0.2,
                                       server_momentum=0.5))
    assert type(strategy) is FLOWER_CLASSES[name]
    if name == "fedprox":
        assert strategy.proximal_mu == 0.3  # type: ignore[attr-defined]
    if name in ("fedadam", "fedyogi"):
        assert strategy.eta == 0.2  # type: ignore[attr-defined]
    if name == "fedavgm":
        assert strategy.server_momentum == 0.5  # type: ignore[attr-defined]
        assert strategy.server_learning_rate == 1.0  # type: ignore[attr-defined]
    wrapped = _built(FederationConfig(strategy=name, client_dp=True))
    assert isinstance(wrapped, ClientLevelDP) and type(wrapped.strategy) is FLOWER_CLASSES[name]


def test_unknown_and_doubly_registered_strategies_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'; expected one of fedavg, "):
        FederationConfig(strategy="fedsgd").validate()
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("fedavg")(lambda config, common: FedAvg(**common))
    with pytest.raises(ConfigError, match=r"server-momentum must be in \[0, 1\), got 1.0"):
        FederationConfig(strategy="fedavgm", server_momentum=1.0).validate()
    assert get_strategy("fedmedian").sees_each_update
    assert not get_strategy("fedprox").sees_each_update


def test_a_strategy_unknown_to_the_federation_folder_exits_with_code_2(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", str(repo / "examples" / "heart"), "--set", "strategy=fedsgd",
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    assert "unknown strategy 'fedsgd'; expected one of" in capsys.readouterr().err


# fedavg and fedadam run through `fedmed run` in tests/test_spine_federation.py, with the
# same assertions as below; these are the other strategies.
SPINE_STRATEGIES = ("fedavg", "fedadam")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", [s for s in FLOWER_CLASSES if s not in SPINE_STRATEGIES])
def test_a_short_federation_runs_under_each_other_strategy(
    repo: Path, tmp_path: Path, isolated_state: Path, strategy: str
) -> None:
    out = tmp_path / "run"
    args = ["run", str(repo / "examples" / "heart"), "--rounds", "2", "--strategy", strategy,
            "--set", "explain=false", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # explain = false: no site was asked for explanations, none is missing, the report says so
    assert metrics["config"]["explain"] is False and "explanations" not in metrics
    assert not [e for r in metrics["rounds"] for e in r.get("events", [])
                if e.get("kind") == "explanation-failure"]
    assert "This run set `explain = false`: the sites made none." in (
        out / "report.md").read_text()
    homes = isolated_state / "sites" / "heart"
    assert homes.is_dir() and not list(homes.rglob("shap-*.png"))
    assert metrics["strategy"] == strategy and metrics["config"]["strategy"] == strategy
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    # Every site trained in both rounds (the trimmed mean and the median see all four).
    for site in SITES:
        assert metrics["privacy"][site]["rounds_joined"] == 2
        assert metrics["privacy"][site]["rounds_refused"] == 0
        assert metrics["rounds"][-1]["fit"][site]["refused"] == 0
    assert sorted(metrics["final"]["per_site"]) == SITES
    for scores in metrics["final"]["per_site"].values():
        assert math.isfinite(scores["accuracy"]) and 0.0 <= scores["accuracy"] <= 1.0
    assert math.isfinite(metrics["final"]["mean"]["accuracy"])
    # The final model is the last aggregate, and aggregation moved it from the start.
    pack = get_task("heart")
    torch.manual_seed(0)  # the coordinator's initial model (seed 0 in examples/heart)
    initial = [v.numpy() for v in pack.build_model().state_dict().values()]
    final = [v.numpy() for v in torch.load(out / "model.pt").values()]
    last = load_checkpoint(out / "checkpoints" / "round-0002.npz")
    assert all(np.allclose(a, b) for a, b in zip(last, final, strict=True))
    assert all(np.isfinite(w).all() for w in final)
    assert not all(np.allclose(a, b) for a, b in zip(initial, final, strict=True))
