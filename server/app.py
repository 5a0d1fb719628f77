"""The coordinator's Flower ServerApp.

It runs Flower's legacy :class:`DefaultWorkflow` around a legacy strategy: that
is the one server code path that Flower 1.42's SecAgg+ workflow plugs into
(``fit_workflow=SecAggPlusWorkflow(...)``), so secure aggregation and DP are
switches, not a second server. The strategy is wrapped by
:class:`RecordingStrategy`, which writes per-site metrics and per-round
checkpoints to the run directory; the final model is saved as ``model.pt``.

Contract with the node: see ``fedmed.clients.app``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.common import Context, Scalar, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow

import fedmed
from fedmed.config import FederationConfig
from fedmed.outputs import RunDirectory
from fedmed.plots import plot_run
from fedmed.server.recording import RecordingStrategy
from fedmed.server.strategies import build_strategy
from fedmed.state import state_dir
from fedmed.tasks import TaskPack, get_task
from fedmed.training import get_weights, set_weights


def fit_config_fn(config: FederationConfig, pack: TaskPack):  # noqa: ANN201
    """The per-round training instructions sent to every node."""

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return {
            "server-round": server_round,
            "local-epochs": config.local_epochs or pack.default_local_epochs,
            "batch-size": config.batch_size or pack.default_batch_size,
            "lr": config.lr or pack.default_lr,
            "momentum": config.momentum,
            "seed": config.seed * 100_003 + server_round,
        }

    return fit_config


def default_run_dir(config: FederationConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return state_dir("runs") / f"{config.federation}-{config.strategy}-{stamp}"


def run_coordinator(grid: Grid, context: Context, config: FederationConfig) -> Path:
    """Run ``config.num_server_rounds`` rounds; return the run directory."""
    pack = get_task(config.task)
    sites = config.site_list(pack.site_names())
    torch.manual_seed(config.seed)
    model = pack.build_model()
    run_dir = RunDirectory(
        Path(config.run_dir) if config.run_dir else default_run_dir(config),
        header={
            "fedmed-version": fedmed.__version__,
            "federation": config.federation,
            "task": config.task,
            "strategy": config.strategy,
            "sites": sites,
            "primary-metric": pack.primary_metric,
            "config": config.to_run_config(),
        },
    )
    recorder = RecordingStrategy(
        build_strategy(
            config,
            num_sites=len(sites),
            initial_parameters=ndarrays_to_parameters(get_weights(model)),
            on_fit_config_fn=fit_config_fn(config, pack),
        ),
        run_dir,
        num_rounds=config.num_server_rounds,
        primary_metric=pack.primary_metric,
    )
    legacy_context = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.num_server_rounds),
        strategy=recorder,
    )
    DefaultWorkflow()(grid, legacy_context)
    if recorder.latest_weights is not None:
        set_weights(model, recorder.latest_weights)
        torch.save(model.state_dict(), run_dir.root / "model.pt")
    plot_run(run_dir.document, run_dir.root / "plots")
    return run_dir.root


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's, updated with ``overrides`` (used by fedmed run)."""
    extra = dict(overrides or {})
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_coordinator(grid, context, FederationConfig.from_run_config({**context.run_config, **extra}))

    return server_app


app = make_server_app()
