"""``fedmed run`` and ``fedmed demo``: a federation folder, end to end, embedded.

``fedmed run FEDERATION --coordinator ADDR --kit DIR`` submits the same federation to
a deployed coordinator instead (:func:`fedmed.commands.deploy.run_on_coordinator`).

Runs are private by default (the federation's ``dp`` setting; ``--no-dp`` turns it
off, and sites with a finite budget then refuse). Simulated site homes live in
``--sites-home`` or ``<state>/sites/<federation>``, so ε composes across runs. The
run ends with each site's ε and the compliance report (``report.html``) written
into the run directory; with ``--track`` it is then logged to MLflow and its model
registered with its privacy provenance (:mod:`fedmed.commands.models`). With
``--ray-address`` the simulated nodes run on an existing Ray cluster
(:class:`fedmed.simulation.NodeResources`; ``--node-cpus``/``--node-gpus`` per node).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.console import Console

from fedmed.commands.deploy import add_coordinator_options, run_on_coordinator
from fedmed.commands.federation import federation_config, privacy_table
from fedmed.commands.models import add_tracking_options, checked_tracking_uri, track_run_dir
from fedmed.config import FederationConfig, strategy_names
from fedmed.errors import ConfigError
from fedmed.server.progress import results_table
from fedmed.server.run_report import REPORT_FILE
from fedmed.simulation import NodeResources
from fedmed.tasks import get_task
from fedmed.tracking import TrackingError

DEFAULT_FEDERATION = Path(__file__).resolve().parents[2] / "examples" / "heart"
console = Console()


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="run directory (default: .fedmed/runs/...)")
    parser.add_argument("--rounds", type=int, help="number of federated rounds")
    parser.add_argument("--strategy", choices=strategy_names(), help="aggregation strategy")
    parser.add_argument("--seed", type=int, help="training seed")
    parser.add_argument("--sites-home", type=Path, help="folder holding the simulated site homes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting of the federation's [tool.flwr.app.config]",
    )


def add_privacy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="DP-SGD at every site (default: the federation's 'dp' setting, on in examples)",
    )
    parser.add_argument(
        "--epsilon", type=float, help="target ε of this run at each site (per-example DP)"
    )
    parser.add_argument(
        "--client-dp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also client-level DP at the coordinator (Flower's server-side clipping)",
    )


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where a simulated run's nodes run: a Ray cluster, and what each node reserves."""
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        default="",
        help="run the simulated nodes on an existing Ray cluster (HOST:PORT of its head, "
        "as 'ray start --head' printed; 'auto' for the one started last on this machine)",
    )
    parser.add_argument(
        "--node-cpus", type=float, default=1.0, metavar="N",
        help="CPUs each simulated node reserves (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--node-gpus", type=float, default=0.0, metavar="N",
        help="GPUs each simulated node reserves; fractions share a card (default 0)",
    )  # fmt: skip


def node_resources(args: argparse.Namespace) -> NodeResources:
    """The command line's cluster options (defaults where a command has none)."""
    return NodeResources(
        ray_address=str(getattr(args, "ray_address", "") or ""),
        node_cpus=float(getattr(args, "node_cpus", 1.0)),
        node_gpus=float(getattr(args, "node_gpus", 0.0)),
    )


def preflight(config: FederationConfig) -> None:
    """Open every site's data in this process first, so bad input fails in one clear line.

    Each site's data pass its site home's admission stage, as in the simulated node that
    will train on them: the de-id state and caches live in the home and each batch is
    signed there once (the nodes find it signed and cached)."""
    from fedmed.clients.node import HospitalSite
    from fedmed.clients.site_home import default_site_home
    from fedmed.server.app import dp_job

    dp_job(config)  # unknown accountant or mode fails here, not inside the simulation
    data_dir = Path(config.data_dir) if config.data_dir else None
    for site in config.site_list(get_task(config.task).site_names(data_dir)):
        HospitalSite.open(config.task, site, data_dir, config.seed, default_site_home(config, site))


def run_federation_folder(folder: Path, args: argparse.Namespace) -> int:
    from fedmed.server.app import default_run_dir
    from fedmed.simulation import run_simulation

    config = federation_config(folder, args)
    resources = node_resources(args)  # bad --node-cpus fails before the sites' data are read
    preflight(config)
    if not config.run_dir:  # fixed here so a stopped run still gets its report
        config = dataclasses.replace(config, run_dir=str(default_run_dir(config).resolve()))
    privacy = f"DP-SGD target ε {config.epsilon:g} per site" if config.dp else "no DP"
    console.print(
        f"[bold]fedmed[/bold] federation [cyan]{config.federation}[/cyan]: task {config.task}, "
        f"{config.strategy}, {config.num_server_rounds} rounds, {privacy}; "
        f"site homes in {config.sites_home}"
    )
    if resources.ray_address:
        console.print(f"simulated nodes on the Ray cluster at {resources.ray_address}")
    run_dir = Path(config.run_dir)
    tracking_uri = checked_tracking_uri(args)
    try:
        run_simulation(config, debug=bool(getattr(args, "debug", False)), resources=resources)
    except BaseException:  # a stopped run still gets its report (refusals are in it)
        if (run_dir / "metrics.json").is_file():
            report = write_run_report(run_dir, Path(config.sites_home))
            console.print(f"privacy compliance report: [bold]{report}[/bold]")
        raise
    report = write_run_report(run_dir, Path(config.sites_home))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    final = metrics["final"]
    title = f"{config.federation}: final global model"
    console.print(results_table(title, final["per_site"], final["mean"]))
    console.print(privacy_table(metrics))
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    console.print(f"run report (scores, plots, explanations): [bold]{run_dir / REPORT_FILE}[/bold]")
    console.print(f"privacy compliance report: [bold]{report}[/bold]")
    if args.track:
        try:
            track_run_dir(run_dir, tracking_uri)
        except TrackingError as exc:
            raise TrackingError(
                f"{exc} (the run itself finished: track it later with "
                f"'fedmed models track {run_dir}')"
            ) from exc
    return 0


def write_run_report(run_dir: Path, sites_home: Path) -> Path:
    """The compliance report of the run's coordinator log and the federation's site homes."""
    from fedmed.audit.report_html import write_report

    out = run_dir / "report.html"
    write_report([run_dir, sites_home] if sites_home.is_dir() else [run_dir], out)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    if args.coordinator:
        if args.ray_address:
            raise ConfigError(
                "--ray-address runs simulated nodes on a Ray cluster; a deployed run "
                "(--coordinator) trains on the hospitals' own nodes"
            )
        if args.track:
            raise ConfigError(
                "--track with --coordinator: the run directory is on the coordinator; run "
                "'fedmed models track RUN_DIR [--tracking-uri URI]' there after the run"
            )
        return run_on_coordinator(args.federation, args)
    if args.kit:
        raise ConfigError("--kit is for deployment: pass --coordinator HOST:PORT as well")
    return run_federation_folder(args.federation, args)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_federation_folder(DEFAULT_FEDERATION, args)


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a federation folder (simulation, or a deployed coordinator)",
        description="Run a federation folder (a Flower app folder under examples/) with one "
        "simulated node per site, or on a deployed coordinator with --coordinator and --kit "
        "(SecAgg+ on unless the folder or --set secagg=false says otherwise), then print the "
        "per-site results.",
    )
    run.add_argument("federation", type=Path, help="federation folder, e.g. examples/heart")
    add_run_options(run)
    add_privacy_options(run)
    add_tracking_options(run)
    add_cluster_options(run)
    add_coordinator_options(run)
    run.set_defaults(func=cmd_run)

    demo = subparsers.add_parser(
        "demo",
        help="run the default federation (4 UCI heart-disease hospitals) end to end",
        description="The default federation end to end: Cleveland, Hungary, Switzerland and "
        "VA Long Beach as four simulated hospital nodes.",
    )
    add_run_options(demo)
    add_privacy_options(demo)
    add_tracking_options(demo)
    add_cluster_options(demo)
    demo.set_defaults(func=cmd_demo)
