"""The hospital node's Flower ClientApp.

Contract with the coordinator (``fedmed.server.app``):

- Identity. In simulation the node is the ``partition-id``-th site of the
  federation's ``sites``; in deployment its node config names it (``site``,
  ``data-dir``, ``site-home``). Its site home (policy, ledger, audit log, key) is
  ``site-home`` or, in simulation, ``fedmed.clients.site_home.default_site_home``.
- ``fit`` receives the global weights and a config with ``run-id``,
  ``server-round``, ``local-epochs``, ``batch-size``, ``lr``, ``momentum``,
  ``seed``, the job's DP request (``fedmed.privacy.job.DPJob`` keys: ``dp``,
  ``dp-epsilon``, ``dp-delta``, ``dp-noise-multiplier``, ``dp-clip-norm``,
  ``dp-accountant``, ``dp-grad-sample-mode``, ``num-rounds``) and, from Flower's
  FedProx, ``proximal_mu`` (the node MUST then add the proximal term). Before
  training the node checks the request against its policy and ledger
  (``fedmed.clients.private_round``).

  - Accepted: it returns the new weights, the number of training examples and the
    metrics ``site``, ``refused = 0``, ``train-loss``, ``steps``, ``epsilon`` (the
    site's total ε after this round, all runs), ``delta``, ``epsilon-budget``,
    ``accountant``, ``noise-multiplier``, ``sample-rate``, ``clip-norm`` and its
    audit log head (``audit-key``, ``audit-seq``, ``audit-hash``) for the
    coordinator to witness.
  - Refused: it returns the weights it received unchanged, ``num_examples = 0``
    and ``site``, ``refused = 1``, ``reason`` (and ``epsilon``/``delta`` when the
    ledger was readable). The coordinator MUST NOT aggregate such a reply.
- Secure aggregation: when the coordinator runs SecAgg+, its messages carry the
  ``secaggplus_configs`` record and go through Flower's ``secaggplus_mod``
  (``fedmed.clients.secagg``); the node then uploads only its masked, clipped,
  quantized update. The same app serves both kinds of run.
- ``evaluate`` scores the received weights on the site's own test split and
  returns ``site`` plus every metric of the task pack. Test data never leave.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import Client, ClientApp, NumPyClient
from flwr.clientapp.typing import Mod
from flwr.common import Context

from fedmed.clients.node import HospitalSite
from fedmed.clients.private_round import RoundJob, refusal, run_private_round
from fedmed.clients.secagg import secagg_when_requested
from fedmed.clients.site_home import default_site_home
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.privacy.job import DPJob
from fedmed.tasks import get_task
from fedmed.training import TrainSettings

Scalar = bool | int | float | str


@lru_cache(maxsize=8)
def _open_site(task: str, site: str, data_dir: str, seed: int) -> HospitalSite:
    """Sites are cached per process: Flower calls ``client_fn`` for every message."""
    return HospitalSite.open(task, site, data_dir or None, seed)


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
    return _open_site(config.task, site, data_dir, config.seed), home_root


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


def round_job(fit_config: Mapping[str, Scalar]) -> RoundJob:
    """The coordinator's instructions for one round (run, round, training, DP request)."""
    return RoundJob(
        run=str(fit_config.get("run-id", "")),
        round=int(fit_config.get("server-round", 0)),
        settings=train_settings(fit_config),
        dp=DPJob.from_fit_config(fit_config),
    )


class HospitalClient(NumPyClient):
    """Flower's view of one hospital site and its site home."""

    def __init__(self, site: HospitalSite, home: Path) -> None:
        self.site = site
        self.home = home

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        try:
            job = round_job(config)
        except (ConfigError, KeyError, ValueError) as exc:  # malformed instructions: refuse
            reason = f"malformed round instructions: {exc}"
            outcome = refusal(self.site, [np.asarray(p) for p in parameters], reason, {})
        else:
            outcome = run_private_round(self.site, self.home, parameters, job)
        return outcome.weights, outcome.num_examples, outcome.metrics

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        scores = self.site.evaluate(parameters)
        metrics: dict[str, Scalar] = {"site": self.site.name, **scores}
        primary = scores[self.site.pack.primary_metric]
        return 1.0 - primary, len(self.site.data.test), metrics  # type: ignore[arg-type]


def make_client_app(
    overrides: Mapping[str, Any] | None = None, mods: Sequence[Mod] = ()
) -> ClientApp:
    """A ClientApp whose run config is Flower's, updated with ``overrides`` (used by fedmed run).

    ``mods`` run inside the SecAgg+ mod, on the plain training reply (tests use one to
    simulate a misbehaving site).
    """
    extra = dict(overrides or {})

    def client_fn(context: Context) -> Client:
        config = FederationConfig.from_run_config({**context.run_config, **extra})
        return HospitalClient(*site_for_context(context, config)).to_client()

    return ClientApp(client_fn=client_fn, mods=[secagg_when_requested, *mods])


app = make_client_app()
