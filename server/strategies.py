"""Flower's aggregation strategies, chosen by name from the federation config.

Flower's own implementations are used (FedAvg, McMahan 2017; FedProx, Li 2020;
FedAdam/FedYogi, Reddi 2021; FedTrimmedAvg, Yin 2018; FedMedian). They are the
legacy strategies that Flower 1.42 still supports and that its SecAgg+ workflow
requires, so one server code path serves plain and secure aggregation.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.common import Parameters, Scalar
from flwr.server.strategy import (
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Strategy,
)

from fedmed.config import FederationConfig
from fedmed.errors import ConfigError

FitConfigFn = Callable[[int], dict[str, Scalar]]


def build_strategy(
    config: FederationConfig,
    num_sites: int,
    initial_parameters: Parameters,
    on_fit_config_fn: FitConfigFn,
) -> Strategy:
    """The Flower strategy named by ``config.strategy``, sized for ``num_sites`` nodes."""
    min_nodes = min(config.min_nodes, num_sites)
    common = dict(
        fraction_fit=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_fit_clients=min_nodes,
        min_evaluate_clients=min_nodes,
        min_available_clients=min_nodes,
        on_fit_config_fn=on_fit_config_fn,
        accept_failures=True,
        initial_parameters=initial_parameters,
    )
    name = config.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "fedprox":
        return FedProx(**common, proximal_mu=config.proximal_mu)
    if name == "fedadam":
        return FedAdam(**common, eta=config.server_lr, eta_l=config.lr or 0.1)
    if name == "fedyogi":
        return FedYogi(**common, eta=config.server_lr, eta_l=config.lr or 0.1)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=0.2)
    if name == "fedmedian":
        return FedMedian(**common)
    raise ConfigError(f"unknown strategy {name!r}")
