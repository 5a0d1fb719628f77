"""``fedmed run`` and ``fedmed demo``: a federation folder, end to end, embedded."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from fedmed.config import STRATEGIES, FederationConfig, load_federation
from fedmed.server.progress import results_table
from fedmed.tasks import get_task

DEFAULT_FEDERATION = Path(__file__).resolve().parents[2] / "examples" / "heart"
console = Console()


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="run directory (default: .fedmed/runs/...)")
    parser.add_argument("--rounds", type=int, help="number of federated rounds")
    parser.add_argument("--strategy", choices=STRATEGIES, help="aggregation strategy")
    parser.add_argument("--seed", type=int, help="training seed")
    parser.add_argument("--sites-home", type=Path, help="folder holding the simulated site homes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting of the federation's [tool.flwr.app.config]",
    )


def federation_config(folder: Path, args: argparse.Namespace) -> FederationConfig:
    """The folder's settings with the command line's overrides applied."""
    settings: dict[str, Any] = load_federation(folder)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"fedmed: error: --set expects KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    for key, value in (
        ("run-dir", args.out and str(args.out.resolve())),
        ("num-server-rounds", args.rounds),
        ("strategy", args.strategy),
        ("seed", args.seed),
        ("sites-home", args.sites_home and str(args.sites_home.resolve())),
    ):
        if value is not None:
            settings[key] = value
    return FederationConfig.from_run_config(settings)


def preflight(config: FederationConfig) -> None:
    """Open every site's data in this process first, so bad input fails in one clear line."""
    pack = get_task(config.task)
    data_dir = Path(config.data_dir) if config.data_dir else None
    for site in config.site_list(pack.site_names(data_dir)):
        pack.load_site(site, data_dir, config.seed)


def run_federation_folder(folder: Path, args: argparse.Namespace) -> int:
    from fedmed.simulation import run_simulation

    config = federation_config(folder, args)
    preflight(config)
    console.print(
        f"[bold]fedmed[/bold] federation [cyan]{config.federation}[/cyan]: task {config.task}, "
        f"{config.strategy}, {config.num_server_rounds} rounds"
    )
    run_dir = run_simulation(config)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    final = metrics["final"]
    console.print(results_table(f"{config.federation}: final global model", final["per_site"], final["mean"]))
    console.print(f"run directory: [bold]{run_dir}[/bold]")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return run_federation_folder(args.federation, args)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_federation_folder(DEFAULT_FEDERATION, args)


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser(
        "run",
        help="run a federation folder on Flower's Simulation Engine",
        description="Run a federation folder (a Flower app folder under examples/) with one "
        "simulated node per site, then print the per-site results.",
    )
    run.add_argument("federation", type=Path, help="federation folder, e.g. examples/heart")
    add_run_options(run)
    run.set_defaults(func=cmd_run)

    demo = subparsers.add_parser(
        "demo",
        help="run the default federation (4 UCI heart-disease hospitals) end to end",
        description="The default federation end to end: Cleveland, Hungary, Switzerland and "
        "VA Long Beach as four simulated hospital nodes.",
    )
    add_run_options(demo)
    demo.set_defaults(func=cmd_demo)
