"""``fedmed run`` and ``fedmed demo``: a federation folder, end to end, embedded.

``fedmed run FEDERATION --coordinator ADDR --kit DIR`` submits the same federation to
a deployed coordinator instead (:func:`fedmed.commands.deploy.run_on_coordinator`).

Runs are private by default (the federation's ``dp`` setting; ``--no-dp`` turns it
off, and sites with a finite budget then refuse). Simulated site homes live in
``--sites-home`` or ``<state>/sites/<federation>``, so ε composes across runs. The
run ends with each site's ε and the compliance report (``report.html``) written
into the run directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from rich.console import Console

from fedmed.commands.deploy import add_coordinator_options, run_on_coordinator
from fedmed.commands.federation import federation_config, privacy_table
from fedmed.config import FederationConfig, strategy_names
from fedmed.errors import ConfigError
from fedmed.server.progress import results_table
from fedmed.server.run_report import REPORT_FILE
from fedmed.tasks import get_task

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


def preflight(config: FederationConfig) -> None:
    """Open every site's data in this process first, so bad input fails in one clear line."""
    from fedmed.server.app import dp_job

    dp_job(config)  # unknown accountant or mode fails here, not inside the simulation
    pack = get_task(config.task)
    data_dir = Path(config.data_dir) if config.data_dir else None
    for site in config.site_list(pack.site_names(data_dir)):
        pack.load_site(site, data_dir, config.seed)


def run_federation_folder(folder: Path, args: argparse.Namespace) -> int:
    from fedmed.server.app import default_run_dir
    from fedmed.simulation import run_simulation

    config = federation_config(folder, args)
    preflight(config)
    if not config.run_dir:  # fixed here so a stopped run still gets its report
        config = dataclasses.replace(config, run_dir=str(default_run_dir(config).resolve()))
    privacy = f"DP-SGD target ε {config.epsilon:g} per site" if config.dp else "no DP"
    console.print(
        f"[bold]fedmed[/bold] federation [cyan]{config.federation}[/cyan]: task {config.task}, "
        f"{config.strategy}, {config.num_server_rounds} rounds, {privacy}; "
        f"site homes in {config.sites_home}"
    )
    run_dir = Path(config.run_dir)
    try:
        run_simulation(config, debug=bool(getattr(args, "debug", False)))
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
    return 0


def write_run_report(run_dir: Path, sites_home: Path) -> Path:
    """The compliance report of the run's coordinator log and the federation's site homes."""
    from fedmed.audit.report_html import write_report

    out = run_dir / "report.html"
    write_report([run_dir, sites_home] if sites_home.is_dir() else [run_dir], out)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    if args.coordinator:
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
    demo.set_defaults(func=cmd_demo)
