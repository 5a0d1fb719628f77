"""A strategy wrapper that records what the inner Flower strategy does.

Flower's strategies aggregate; they do not keep per-site results or checkpoints.
:class:`RecordingStrategy` delegates every decision to the wrapped strategy and,
around it, writes each site's fit and evaluation metrics, failures, and the
global weights of every round into the run directory. It never changes the
aggregate, so FedAvg stays FedAvg.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedmed.outputs import RunDirectory
from fedmed.server import progress

FitResults = list[tuple[ClientProxy, FitRes]]
EvaluateResults = list[tuple[ClientProxy, EvaluateRes]]
Failures = list[tuple[ClientProxy, FitRes] | tuple[ClientProxy, EvaluateRes] | BaseException]


def _site_of(proxy: ClientProxy, metrics: dict[str, Scalar]) -> str:
    return str(metrics.get("site", f"node-{proxy.cid}"))


def _describe_failures(failures: Sequence[object]) -> list[str]:
    return [repr(f) if isinstance(f, BaseException) else "node returned an error" for f in failures]


class RecordingStrategy(Strategy):
    """Delegates to ``inner``; records per-site metrics and checkpoints in ``run_dir``."""

    def __init__(
        self, inner: Strategy, run_dir: RunDirectory, num_rounds: int, primary_metric: str
    ) -> None:
        self.inner = inner
        self.run_dir = run_dir
        self.num_rounds = num_rounds
        self.primary_metric = primary_metric
        self.latest_weights: list[np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.inner!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        parameters = self.inner.initialize_parameters(client_manager)
        if parameters is not None:
            self.latest_weights = parameters_to_ndarrays(parameters)
        return parameters

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self, server_round: int, results: FitResults, failures: Failures
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        per_site = {
            _site_of(proxy, res.metrics): {**res.metrics, "num-examples": res.num_examples}
            for proxy, res in results
        }
        self.run_dir.record_fit(server_round, per_site)
        for reason in _describe_failures(failures):
            self.run_dir.record_event(server_round, {"kind": "fit-failure", "detail": reason})
            progress.note(f"round {server_round}: a node failed during training: {reason}")
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if parameters is not None:
            self.latest_weights = parameters_to_ndarrays(parameters)
            self.run_dir.save_checkpoint(server_round, self.latest_weights)
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self, server_round: int, results: EvaluateResults, failures: Failures
    ) -> tuple[float | None, dict[str, Scalar]]:
        per_site = {}
        for proxy, res in results:
            scores = {k: float(v) for k, v in res.metrics.items() if k != "site"}
            per_site[_site_of(proxy, res.metrics)] = scores
        for reason in _describe_failures(failures):
            self.run_dir.record_event(server_round, {"kind": "evaluate-failure", "detail": reason})
        if per_site:
            mean = self.run_dir.record_evaluation(server_round, per_site)
            progress.round_line(server_round, self.num_rounds, self.primary_metric, per_site, mean)
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round, parameters)
