"""The coordinator's Flower ServerApp.

It runs Flower's legacy :class:`DefaultWorkflow` around a legacy strategy: that
is the one server code path that Flower 1.42's SecAgg+ workflow plugs into
(``fit_workflow=SecAggPlusWorkflow(...)``), so secure aggregation and DP are
switches, not a second server. The strategy is wrapped by
:class:`RecordingStrategy`, which drops refusals, writes per-site metrics and
per-round checkpoints to the run directory and signs each round into the
coordinator's audit log (``<run dir>/audit/coordinator.jsonl``, key in the
coordinator home: ``coordinator-home`` or ``<state>/coordinator``) and keeps the
federation's witness record there too (the last audit-log head of each site,
:mod:`fedmed.server.witness`, sent back to the sites every round) — a deployed run
(``registered-sites``) names each node by its registered site, from the coordinator
home's ``identities.json`` (:mod:`fedmed.server.identities`); the final
model is saved as ``model.pt`` and the run's report for people as ``report.md``
(:mod:`fedmed.server.run_report`: scores, plots, and where each site holds its
explanations of the final model — those files never leave the sites).

Every round's fit config carries the run id and the job's DP request
(:class:`fedmed.privacy.job.DPJob`); each site decides under its own policy.
Contract with the node: see ``fedmed.clients.app``.

With ``secagg = true`` the fit step is Flower's SecAgg+ workflow
(:func:`fedmed.server.secagg.secagg_workflow`); updates are screened before
aggregation (``max-update-norm``, :mod:`fedmed.server.validation`). A run directory
that already holds checkpoints of the same run is resumed from the last one
(:mod:`fedmed.server.resume`). ``metrics.json``'s ``status`` is ``running`` while the
ServerApp runs and then how it ended (``completed``, ``stopped: …``); a deployed run is also
indexed in the coordinator home (:mod:`fedmed.server.run_index`), so a run whose ServerApp
was killed before it could write its end is told apart from a live one
(:mod:`fedmed.deploy.runs`). The run ends with one ``FEDMED-RESULT`` log line that
``fedmed run --coordinator`` reads on the submitting machine.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.common import Context, Scalar, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.workflow import DefaultWorkflow
from flwr.superlink.grid import http_grid

import fedmed
from fedmed.audit import AuditLog
from fedmed.audit.provenance import code_version, config_hash
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.outputs import RunDirectory
from fedmed.plots import plot_run
from fedmed.privacy.job import DPJob
from fedmed.server import progress
from fedmed.server.identities import IDENTITIES_FILE, NodeIdentities
from fedmed.server.object_pulls import prompt_object_pulls
from fedmed.server.polling_grid import PollingGrid
from fedmed.server.recording import RecordingStrategy
from fedmed.server.resume import ResumePoint, RoundOffset, find_resume_point
from fedmed.server.run_index import record_run
from fedmed.server.run_report import REPORT_FILE, write_markdown_report
from fedmed.server.secagg import secagg_workflow
from fedmed.server.strategies import build_strategy
from fedmed.server.witness import WitnessRecord
from fedmed.state import coordinator_home_path, state_dir, witness_record_path
from fedmed.tasks import TaskPack, get_task
from fedmed.tasks.base import fingerprint_arrays
from fedmed.training.local_norms import norm_positions
from fedmed.training.loop import TrainSettings, get_weights, set_weights

COORDINATOR_LOG = Path("audit") / "coordinator.jsonl"


def dp_job(config: FederationConfig) -> DPJob:
    """The DP request every site receives with each round of this run
    (:meth:`DPJob.from_config`; ``fedmed run`` calls this to fail early on bad settings)."""
    return DPJob.from_config(config)


def fit_config_fn(config: FederationConfig, pack: TaskPack, run_id: str = ""):  # noqa: ANN201
    """The per-round training instructions sent to every node."""
    privacy = dp_job(config).to_fit_config()
    settings = TrainSettings.for_pack(config, pack)

    def fit_config(server_round: int) -> dict[str, Scalar]:
        return {
            **privacy,
            "run-id": run_id,
            "server-round": server_round,
            "local-epochs": settings.local_epochs,
            "batch-size": settings.batch_size,
            "steps-per-epoch": settings.steps_per_epoch,
            "lr": settings.lr,
            "momentum": settings.momentum,
            "local-norm": config.local_norm,
            "seed": config.seed * 100_003 + server_round,
        }

    return fit_config


def evaluate_config_fn(run_id: str):  # noqa: ANN201
    """What a node needs to evaluate a round: the run (its kept normalisation layers)."""

    def evaluate_config(server_round: int) -> dict[str, Scalar]:
        return {"run-id": run_id, "server-round": server_round}

    return evaluate_config


def default_run_dir(config: FederationConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return state_dir("runs") / f"{config.federation}-{config.strategy}-{stamp}"


def coordinator_audit(config: FederationConfig, run_dir: Path) -> AuditLog:
    """The coordinator's signed log for this run, with the coordinator home's key."""
    home = coordinator_home_path(config.coordinator_home)
    return AuditLog.open(run_dir / COORDINATOR_LOG, home / "keys", "coordinator")


def witness_record(config: FederationConfig) -> WitnessRecord:
    """The federation's witness record in the coordinator home (in simulation, one per
    folder of simulated site homes: :func:`fedmed.state.witness_record_path`)."""
    home = coordinator_home_path(config.coordinator_home)
    path = witness_record_path(home, config.federation, config.sites_home)
    return WitnessRecord.load(path, config.federation)


def node_identities(config: FederationConfig) -> NodeIdentities | None:
    """Deployed runs: the coordinator home's registry of node identities (ConfigError if it
    is missing — a deployed run never takes a site's name from the node); None in simulation."""
    if not config.registered_sites:
        return None
    return NodeIdentities.load(coordinator_home_path(config.coordinator_home) / IDENTITIES_FILE)


def open_run(
    root: Path, config: FederationConfig, sites: list[str], pack: TaskPack
) -> tuple[RunDirectory, ResumePoint | None]:
    """The run directory at ``root``: a new run, or the same run resumed from its checkpoint.

    A run is resumed only with the settings it started with, so the sites' ledgers and
    the coordinator's audit log describe one run; anything else is refused.
    """
    point = find_resume_point(root)
    if point is None:
        run_id = config.run_id or f"{root.name}-{uuid.uuid4().hex[:8]}"
        header = {
            "fedmed-version": fedmed.__version__,
            "run-id": run_id,
            "federation": config.federation,
            "task": config.task,
            "strategy": config.strategy,
            "sites": sites,
            "primary-metric": pack.primary_metric,
            "config": config.to_run_config(),
        }
        return RunDirectory(root, header=header), None
    # A setting added after the run started (absent from its record) counts at its default.
    recorded = {**FederationConfig().to_run_config(), **point.document.get("config", {})}
    if recorded != config.to_run_config():
        raise ConfigError(
            f"{root} holds run {point.run_id} with other settings; resume it with the same "
            "settings or choose another run directory"
        )
    if point.round >= config.num_server_rounds:
        raise ConfigError(f"{root}: run {point.run_id} already completed its rounds")
    return RunDirectory.continued(root, point.trimmed_document()), point


def run_coordinator(grid: Grid, context: Context, config: FederationConfig) -> Path:
    """Run ``config.num_server_rounds`` rounds (or those left after a checkpoint)."""
    pack = get_task(config.task)
    sites = config.site_list(pack.site_names())
    model = initial_model(config, pack)
    root = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    if config.registered_sites:  # before the directory is touched: see run_index
        record_run(coordinator_home_path(config.coordinator_home), str(context.run_id), root)
    run_dir, resumed = open_run(root, config, sites, pack)
    mark_running(run_dir)
    audit = coordinator_audit(config, run_dir.root)
    start_or_resume(audit, run_dir, config, sites, model, resumed)
    done = resumed.round if resumed is not None else 0
    recorder = recording_strategy(config, pack, len(sites), model, run_dir, audit, resumed)
    legacy_context = LegacyContext(
        context=context,
        config=ServerConfig(
            num_rounds=config.num_server_rounds - done, round_timeout=config.round_timeout or None
        ),
        strategy=RoundOffset(recorder, done) if done else recorder,
    )
    status = "failed"
    try:
        DefaultWorkflow(fit_workflow=secagg_workflow(config))(grid, legacy_context)
        status = "completed"
    except Exception as exc:
        status = f"stopped: {exc}"
        raise
    finally:
        finish_run(run_dir, audit, recorder, model, status, pack)
    return run_dir.root


def mark_running(run_dir: RunDirectory) -> None:
    """Say in ``metrics.json`` that the run is under way (``status``, until :func:`finish_run`
    writes how it ended). A ServerApp killed outright never reaches ``finish_run``; a
    deployed run is therefore also indexed in the coordinator home under its Flower run id
    and ServerApp process (:mod:`fedmed.server.run_index`), by which ``fedmed coordinator
    status`` and the coordinator tell such a run from a live one."""
    run_dir.document["status"] = "running"
    run_dir.flush()


def initial_model(config: FederationConfig, pack: TaskPack) -> torch.nn.Module:
    """The seeded initial model; refuses ``local-norm`` for a model with nothing to keep
    local, before any round is asked of the sites."""
    torch.manual_seed(config.seed)
    model = pack.build_model()
    if config.local_norm and not norm_positions(model):
        raise ConfigError(
            f"local-norm: the {config.task} model has no normalisation layer with parameters "
            "to keep at the sites; set local-norm = false"
        )
    return model


def start_or_resume(
    audit: AuditLog,
    run_dir: RunDirectory,
    config: FederationConfig,
    sites: list[str],
    model: torch.nn.Module,
    resumed: ResumePoint | None,
) -> None:
    """Sign the run's start (its settings and code) or its resumption (the checkpoint's
    hash, whose weights are loaded into ``model``), so the log shows how the run began."""
    run_id = str(run_dir.document["run-id"])
    if resumed is None:
        audit.append(
            "run-start",
            {
                "run": run_id,
                "federation": config.federation,
                "task": config.task,
                "sites": sites,
                "config_sha256": config_hash(config.to_run_config()),
                "config": config.to_run_config(),
                "code": code_version(),
            },
        )
        return
    set_weights(model, resumed.weights)
    audit.append(
        "run-resume",
        {
            "run": run_id,
            "from_round": resumed.round,
            "model_sha256": fingerprint_arrays(resumed.weights),
            "code": code_version(),
        },
    )
    progress.note(
        f"resuming run {run_id} after round {resumed.round} of {config.num_server_rounds}"
    )


def recording_strategy(
    config: FederationConfig,
    pack: TaskPack,
    num_sites: int,
    model: torch.nn.Module,
    run_dir: RunDirectory,
    audit: AuditLog,
    resumed: ResumePoint | None,
) -> RecordingStrategy:
    """The registered strategy, starting from ``model``, behind the recorder that admits,
    screens, records and signs every round (:mod:`fedmed.server.recording`)."""
    run_id = str(run_dir.document["run-id"])
    return RecordingStrategy(
        build_strategy(
            config,
            num_sites=num_sites,
            initial_parameters=ndarrays_to_parameters(get_weights(model)),
            on_fit_config_fn=fit_config_fn(config, pack, run_id),
            on_evaluate_config_fn=evaluate_config_fn(run_id),
        ),
        run_dir,
        num_rounds=config.num_server_rounds,
        primary_metric=pack.primary_metric,
        min_nodes=min(config.min_nodes, num_sites),
        audit=audit,
        max_update_norm=config.max_update_norm,
        secure=config.secagg,
        participation=resumed.participation() if resumed is not None else None,
        evaluate_every=config.evaluate_every,
        explain=config.explain,
        witness=witness_record(config),
        identities=node_identities(config),
    )


def finish_run(
    run_dir: RunDirectory,
    audit: AuditLog,
    recorder: RecordingStrategy,
    model: torch.nn.Module,
    status: str,
    pack: TaskPack,
) -> None:
    """Save what the run reached, however it ended: the last global model, plots, the
    report, a signed ``run-end`` entry and the ``FEDMED-RESULT`` line that ``fedmed run
    --coordinator`` reads. Runs in a ``finally``: a stopped run keeps its results."""
    run_dir.document["status"] = status
    run_dir.flush()
    if recorder.latest_weights is not None:
        set_weights(model, recorder.latest_weights)
        torch.save(model.state_dict(), run_dir.root / "model.pt")
    plot_run(run_dir.document, run_dir.root / "plots")
    report = write_report(run_dir, status, pack)
    document = run_dir.document
    audit.append(
        "run-end",
        {
            "run": str(document["run-id"]),
            "status": status,
            "rounds": len(document["rounds"]),
            "model_sha256": (
                fingerprint_arrays(recorder.latest_weights) if recorder.latest_weights else ""
            ),
            "privacy": document["privacy"],
            "client_privacy": document.get("client_privacy", {}),
        },
    )
    result_line(run_dir, status, report)


def result_line(run_dir: RunDirectory, status: str, report: Path | None) -> None:
    """The one ``FEDMED-RESULT`` log line that the submitting machine reads (a deployed
    coordinator's run directory is not on that machine)."""
    document = run_dir.document
    progress.result_line(
        {
            "run-id": str(document["run-id"]),
            "status": status,
            "run_dir": str(run_dir.root.resolve()),
            "final": document["final"],
            "privacy": document["privacy"],
            "client_privacy": document.get("client_privacy", {}),
            "explanations": document.get("explanations", {}),
            "report": str(report.resolve()) if report else "",
        }
    )


def write_report(run_dir: RunDirectory, status: str, pack: TaskPack) -> Path | None:
    """The run's ``report.md``; a failure to write it is shown, never raised.

    Called while the run may be ending on an exception: raising here would hide that
    exception, and the run's results (metrics.json, model, plots) are already saved.
    """
    try:
        return write_markdown_report(
            run_dir.root, run_dir.document, status, pack.explanation_kind
        )
    except Exception as exc:
        progress.note(f"the run report ({run_dir.root / REPORT_FILE}) was not written: {exc!r}")
        return None


def make_server_app(
    overrides: Mapping[str, Any] | None = None, aborted: threading.Event | None = None
) -> ServerApp:
    """A ServerApp whose run config is Flower's, updated with ``overrides`` (used by fedmed run).

    ``aborted`` (embedded simulation only) is set by the caller when the engine's backend
    fails, so the coordinator stops waiting for replies (``PollingGrid``, which also
    notices deployed replies sooner than Flower's 3 s pulls).
    """
    extra = dict(overrides or {})
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = FederationConfig.from_run_config({**context.run_config, **extra})
        prompt_object_pulls(http_grid)  # a deployed run's replies: see object_pulls
        grid = PollingGrid(grid, aborted)  # type: ignore[assignment]
        run_coordinator(grid, context, config)

    return server_app


app = make_server_app()
