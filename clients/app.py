"""The hospital node's Flower ClientApp.

Contract with the coordinator (``fedmed.server.app``):

- Identity. In simulation the node is the ``partition-id``-th site of the
  federation's ``sites``; in deployment its node config names it (``site``,
  ``data-dir``).
- ``fit`` receives the global weights and a config with ``local-epochs``,
  ``batch-size``, ``lr``, ``momentum``, ``seed`` and, from Flower's FedProx,
  ``proximal_mu`` (the node MUST then add the proximal term). It trains locally
  and returns the new weights, the number of training examples, and the metrics
  ``site``, ``train-loss`` and ``steps``.
- ``evaluate`` scores the received weights on the site's own test split and
  returns ``site`` plus every metric of the task pack. Test data never leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import Context

from fedmed.clients.node import HospitalSite
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.tasks import get_task
from fedmed.training import TrainSettings

Scalar = bool | int | float | str


@lru_cache(maxsize=8)
def _open_site(task: str, site: str, data_dir: str, seed: int) -> HospitalSite:
    """Sites are cached per process: Flower calls ``client_fn`` for every message."""
    return HospitalSite.open(task, site, data_dir or None, seed)


def site_for_context(context: Context, config: FederationConfig) -> HospitalSite:
    """Which site this node is, from the node config (deployment) or partition id (simulation)."""
    node_config = context.node_config
    if "site" in node_config:
        site = str(node_config["site"])
        data_dir = str(node_config.get("data-dir", config.data_dir))
    elif "partition-id" in node_config:
        sites = config.site_list(get_task(config.task).site_names())
        partition = int(node_config["partition-id"])
        if partition >= len(sites):
            raise ConfigError(
                f"simulation node {partition} has no site: the federation lists {len(sites)} sites"
            )
        site, data_dir = sites[partition], config.data_dir
    else:
        raise ConfigError("node config names no 'site' (deployment) or 'partition-id' (simulation)")
    return _open_site(config.task, site, data_dir, config.seed)


def train_settings(fit_config: Mapping[str, Scalar]) -> TrainSettings:
    """The coordinator's per-round instructions as typed settings."""
    return TrainSettings(
        local_epochs=int(fit_config["local-epochs"]),
        batch_size=int(fit_config["batch-size"]),
        lr=float(fit_config["lr"]),
        momentum=float(fit_config.get("momentum", 0.0)),
        proximal_mu=float(fit_config.get("proximal_mu", 0.0)),
        seed=int(fit_config.get("seed", 0)),
    )


class HospitalClient(NumPyClient):
    """Flower's view of one hospital site."""

    def __init__(self, site: HospitalSite) -> None:
        self.site = site

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        weights, result = self.site.train(parameters, train_settings(config))
        metrics: dict[str, Scalar] = {
            "site": self.site.name,
            "train-loss": result.mean_loss,
            "steps": result.steps,
        }
        return weights, result.num_examples, metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        scores = self.site.evaluate(parameters)
        metrics: dict[str, Scalar] = {"site": self.site.name, **scores}
        primary = scores[self.site.pack.primary_metric]
        return 1.0 - primary, len(self.site.data.test), metrics  # type: ignore[arg-type]


def make_client_app(overrides: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp whose run config is Flower's, updated with ``overrides`` (used by fedmed run)."""
    extra = dict(overrides or {})

    def client_fn(context: Context) -> Client:
        config = FederationConfig.from_run_config({**context.run_config, **extra})
        return HospitalClient(site_for_context(context, config)).to_client()

    return ClientApp(client_fn=client_fn)


app = make_client_app()
