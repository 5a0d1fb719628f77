"""The coordinator's aggregation strategy, built by name from the federation config.

The names and their builders are registered in :mod:`fedmed.config`
(:func:`~fedmed.config.register_strategy`; FedAvg, FedProx, FedAdam, FedYogi,
FedTrimmedAvg and FedMedian are built in): the registry sits at that low layer
because every process validates the ``strategy`` setting, and only the coordinator
imports this package. Here the registered builder gets the keyword arguments every
Flower strategy takes. All are Flower legacy strategies, the ones that Flower 1.42
still supports and that its SecAgg+ workflow requires, so one server code path serves
plain and secure aggregation.

With ``client-dp = true`` the chosen strategy is wrapped in :class:`ClientLevelDP`:
Flower's ``DifferentialPrivacyServerSideFixedClipping`` (central DP, McMahan et al.
2018; Andrew et al. 2021) with Flower's RDP accountant composing its rounds.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.common import FitRes, Parameters, Scalar
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from fedmed.config import FederationConfig, get_strategy
from fedmed.privacy.client_level import ClientLevelAccountant

FitConfigFn = Callable[[int], dict[str, Scalar]]


class ClientLevelDP(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP, accounted with Flower's RDP accountant.

    Contract: the inner strategy averages the clipped updates; each contributing site
    gets the same weight (``num_examples`` is set to 1 before aggregation), because the
    noise is calibrated to one site's clipped update in an unweighted mean. Aggregation
    metrics gain ``client-epsilon``, ``client-delta`` and ``client-noise-multiplier``.
    """

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        num_sites: int,
        delta: float,
    ) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sites)
        self.accountant = ClientLevelAccountant(num_sites, delta)

    def __repr__(self) -> str:
        return f"ClientLevelDP({self.strategy!r})"

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        for _, res in results:
            res.num_examples = 1
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None and results:
            epsilon = self.accountant.record_round(self.noise_multiplier, len(results))
            metrics = {
                **metrics,
                "client-epsilon": epsilon,
                "client-delta": self.accountant.delta,
                "client-noise-multiplier": self.noise_multiplier,
                "client-clip-norm": self.clipping_norm,
            }
        return parameters, metrics


def build_strategy(
    config: FederationConfig,
    num_sites: int,
    initial_parameters: Parameters,
    on_fit_config_fn: FitConfigFn,
    on_evaluate_config_fn: FitConfigFn | None = None,
) -> Strategy:
    """The strategy of ``config`` for ``num_sites`` nodes, wrapped for client-level DP if asked."""
    inner = _aggregation_strategy(
        config, num_sites, initial_parameters, on_fit_config_fn, on_evaluate_config_fn
    )
    if not config.client_dp:
        return inner
    return ClientLevelDP(
        inner, config.client_noise_multiplier, config.client_clip_norm, num_sites, config.delta
    )


def _aggregation_strategy(
    config: FederationConfig,
    num_sites: int,
    initial_parameters: Parameters,
    on_fit_config_fn: FitConfigFn,
    on_evaluate_config_fn: FitConfigFn | None,
) -> Strategy:
    """The registered strategy named by ``config.strategy``, sized for ``num_sites`` nodes."""
    min_nodes = min(config.min_nodes, num_sites)
    common = dict(
        fraction_fit=config.fraction_train,
        fraction_evaluate=config.fraction_evaluate,
        min_fit_clients=min_nodes,
        min_evaluate_clients=min_nodes,
        min_available_clients=min_nodes,
        on_fit_config_fn=on_fit_config_fn,
        on_evaluate_config_fn=on_evaluate_config_fn,
        accept_failures=True,
        initial_parameters=initial_parameters,
    )
    return get_strategy(config.strategy).build(config, common)
