"""The hospital node as Flower sees it: one site and its site home behind a NumPyClient.

Separate from the ClientApp (``fedmed.clients.app``, which states the contract with
the coordinator) so that loading the app stays cheap: Flower starts a fresh ClientApp
process for every message, and three of SecAgg+'s four messages per round never
train — they must not pay for importing torch and Opacus.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.client import Client, NumPyClient
from flwr.common import Context

from fedmed.clients.explanations import explain_final_round
from fedmed.clients.node import HospitalSite
from fedmed.clients.private_round import RoundJob, refusal, run_private_round
from fedmed.clients.site_home import default_site_home
from fedmed.config import FederationConfig, Scalar
from fedmed.errors import ConfigError
from fedmed.privacy.job import DPJob
from fedmed.privacy.reply import REGISTERED_AUDIT_KEY, REGISTERED_SITE, witnessed_head
from fedmed.tasks import get_task
from fedmed.training.local_norms import LocalNorms
from fedmed.training.loop import TrainSettings


@lru_cache(maxsize=8)
def _open_site(task: str, site: str, data_dir: str, seed: int, home: Path) -> HospitalSite:
    """Sites are cached per process: Flower calls ``client_fn`` for every message. The data
    pass the site home's de-id stage (its batches signed into the home's audit log)."""
    return HospitalSite.open(task, site, data_dir or None, seed, home)


def site_for_context(context: Context, config: FederationConfig) -> tuple[HospitalSite, Path]:
    """This node's site and site home, from the node config (deployment) or partition id."""
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
    home = node_config.get("site-home")
    home_root = Path(str(home)) if home else default_site_home(config, site)
    opened = _open_site(config.task, site, data_dir, config.seed, home_root)
    limit = _physical_batch_limit(node_config, config)
    return replace(opened, max_physical_batch=limit), home_root


def _physical_batch_limit(node_config: Mapping[str, Scalar], config: FederationConfig) -> int:
    """The node's own ``max-physical-batch`` (``fedmed node start --max-physical-batch``),
    else the federation's: memory is the node's hardware, so its own value wins."""
    value = node_config.get("max-physical-batch", config.max_physical_batch)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"node config max-physical-batch must be a whole number >= 0 (0: no limit), "
            f"not {value!r}"
        )
    return value


def train_settings(fit_config: Mapping[str, Scalar]) -> TrainSettings:
    """The coordinator's per-round instructions as typed settings."""
    return TrainSettings(
        local_epochs=int(fit_config["local-epochs"]),
        batch_size=int(fit_config["batch-size"]),
        lr=float(fit_config["lr"]),
        momentum=float(fit_config.get("momentum", 0.0)),
        proximal_mu=float(fit_config.get("proximal_mu", 0.0)),
        seed=int(fit_config.get("seed", 0)),
        steps_per_epoch=int(fit_config.get("steps-per-epoch", 0)),
    )


def round_job(fit_config: Mapping[str, Scalar], site: str = "") -> RoundJob:
    """The coordinator's instructions for one round (run, round, training, DP request, the
    head of ``site``'s audit log that the coordinator last witnessed and, deployed, the
    identity the coordinator registered for this node)."""
    return RoundJob(
        run=str(fit_config.get("run-id", "")),
        round=int(fit_config.get("server-round", 0)),
        settings=train_settings(fit_config),
        dp=DPJob.from_fit_config(fit_config),
        local_norm=bool(fit_config.get("local-norm", False)),
        witnessed=witnessed_head(fit_config, site),
        registered_site=_optional_text(fit_config, REGISTERED_SITE),
        registered_audit_key=_optional_text(fit_config, REGISTERED_AUDIT_KEY),
    )


def _optional_text(fit_config: Mapping[str, Scalar], key: str) -> str | None:
    value = fit_config.get(key)
    return None if value is None else str(value)


class HospitalClient(NumPyClient):
    """Flower's view of one hospital site and its site home."""

    def __init__(self, site: HospitalSite, home: Path) -> None:
        self.site = site
        self.home = home

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        try:
            job = round_job(config, self.site.name)
        except (ConfigError, KeyError, ValueError) as exc:  # malformed instructions: refuse
            reason = f"malformed round instructions: {exc}"
            outcome = refusal(self.site, [np.asarray(p) for p in parameters], reason)
        else:
            outcome = run_private_round(self.site, self.home, parameters, job)
        return outcome.weights, outcome.num_examples, outcome.metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        run = str(config.get("run-id", ""))
        weights = LocalNorms.of(self.home, run).apply(parameters) if run else parameters
        scores = self.site.evaluate(weights)
        metrics: dict[str, Scalar] = {"site": self.site.name, **scores}
        # Last round only: explanations stay in the site home; the reply says where and how many.
        metrics.update(explain_final_round(self.site, self.home, weights, config))
        primary = scores[self.site.pack.primary_metric]
        return 1.0 - primary, len(self.site.data.test), metrics  # type: ignore[arg-type]


def hospital_client(context: Context, config: FederationConfig) -> Client:
    """The Flower client of the site this node (or simulated partition) serves."""
    return HospitalClient(*site_for_context(context, config)).to_client()
