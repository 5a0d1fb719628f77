"""``fedmed models``: the model registry with privacy provenance, and tracking a run into it.

``fedmed models list [--tracking-uri URI | --run-dir DIR] [--json]`` shows every model
version fedmed registered, with each site's ε, δ, mechanism and accountant and the
coordinator audit head it was released under. ``fedmed models track RUN_DIR
[--tracking-uri URI]`` tracks a finished run directory: what ``fedmed run --track`` does
after a simulation, and what a deployed coordinator's operator runs on the coordinator's
machine, where the run directory is (the submitting machine has only the result line).
Both need the ``fedmed[tracking]`` extra; :mod:`fedmed.tracking` says what is logged, and
why from the run directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmed.errors import ConfigError
from fedmed.server.run_report import COMPLIANCE_REPORT
from fedmed.tracking import TrackingError
from fedmed.tracking.record import describe_epsilons, read_run

console = Console()


def mlflow_store() -> ModuleType:
    """:mod:`fedmed.tracking.mlflow_store`, imported on first use: MLflow is an optional
    extra and takes seconds to import, which commands that do not track should not pay."""
    try:
        from fedmed.tracking import mlflow_store as store
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "mlflow":
            raise
        raise TrackingError(
            "experiment tracking needs MLflow: pip install 'fedmed[tracking]'"
        ) from exc
    return store


def add_tracking_options(parser: argparse.ArgumentParser) -> None:
    """``--track`` and ``--tracking-uri`` (``fedmed run``; ``--tracking-uri`` also for
    ``fedmed models track``)."""
    parser.add_argument(
        "--track",
        action="store_true",
        help="after the run, log it to MLflow and register its model with its privacy "
        "provenance (needs fedmed[tracking]); default store: <run dir>/mlruns",
    )
    add_uri_option(parser)


def add_uri_option(parser: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="an MLflow tracking server (http://HOST:PORT) or a sqlite:///FILE store",
    )


def checked_tracking_uri(args: argparse.Namespace) -> str | None:
    """``fedmed run``'s ``--tracking-uri`` (None: the run's embedded store, or no tracking),
    checked before the run, with the extra's presence, so a missing MLflow or an
    unreachable server fails in seconds, not after the last round."""
    if args.tracking_uri and not args.track:
        raise ConfigError("--tracking-uri is used with --track")
    if args.track:
        store = mlflow_store()
        if args.tracking_uri:
            store.check_store(args.tracking_uri, create=True)
    return args.tracking_uri


def track_run_dir(run_dir: Path, uri: str | None) -> None:
    """Track a finished run directory into ``uri`` (its embedded store if None) and say
    where it went. A deployed coordinator writes no compliance report (``fedmed run`` does,
    on the submitting side): it is made here from the run's coordinator log, so every
    tracked run carries one."""
    from fedmed.audit.report_html import write_report

    store = mlflow_store()
    record = read_run(run_dir)
    if not (record.root / COMPLIANCE_REPORT).is_file():
        write_report([record.root], record.root / COMPLIANCE_REPORT)
    if uri is None:
        uri = store.embedded_uri(record.root)
        (record.root / store.EMBEDDED_FOLDER).mkdir(exist_ok=True)
    store.check_store(uri, create=True)
    tracked = store.track(record, uri)
    console.print(f"tracked: MLflow run [bold]{tracked.mlflow_run_id}[/bold] in {tracked.uri}")
    if tracked.model_version is None:
        console.print(f"model not registered: the run ended '{record.status or 'unsigned'}'")
    else:
        console.print(
            f"registered model [bold]{tracked.model_name}[/bold] version {tracked.model_version}"
        )


def cmd_track(args: argparse.Namespace) -> int:
    track_run_dir(args.run_dir, args.tracking_uri)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    store = mlflow_store()
    if args.run_dir is not None:
        if not args.run_dir.is_dir():
            raise TrackingError(f"run directory not found: {args.run_dir}")
        uri = store.embedded_uri(args.run_dir)
    elif args.tracking_uri:
        uri = args.tracking_uri
    else:
        raise ConfigError("fedmed models list needs --tracking-uri URI or --run-dir DIR")
    store.check_store(uri, create=False)
    models = store.registered_models(uri)
    if args.json:
        print(json.dumps(models, indent=2))
    else:
        console.print(models_table(models, uri))
    return 0


def models_table(models: list[dict[str, Any]], uri: str) -> Table:
    table = Table(title=f"registered models in {uri}")
    for column in ("model", "version", "fedmed run", "ε per site", "δ", "audit head"):
        table.add_column(column)
    for model in models:
        deltas = {str(site["delta"]) for site in model["sites"].values()}
        audit = model["audit"]
        table.add_row(
            model["name"],
            model["version"],
            model["run"],
            describe_epsilons(model),
            ", ".join(sorted(deltas)),
            f"{audit['entry']} #{audit['seq']} {audit['hash'][:12]}",
        )
    return table


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models",
        help="registered models and their privacy provenance (MLflow)",
        description="The MLflow model registry of fedmed's global models: each version "
        "carries each site's ε, δ, mechanism and accountant and the coordinator audit head "
        "it was released under. Needs fedmed[tracking].",
    )
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        help="registered model versions with their privacy provenance",
        description="List every model version fedmed registered in a tracking store.",
    )
    where = listing.add_mutually_exclusive_group()
    add_uri_option(where)
    where.add_argument(
        "--run-dir", type=Path, help="a run directory's embedded store (<run dir>/mlruns)"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_list)
    track = actions.add_parser(
        "track",
        help="log a finished run directory to MLflow and register its model",
        description="Log a finished run directory (its configuration, per-round per-site "
        "metrics and ε, plots, reports) to MLflow and register its final model with its "
        "privacy provenance, after checking the model against the coordinator's signed "
        "audit log. For a deployed run, run this on the coordinator's machine.",
    )
    track.add_argument("run_dir", type=Path, help="the run directory")
    add_uri_option(track)
    track.set_defaults(func=cmd_track)

