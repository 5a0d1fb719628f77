"""``fedmed baseline``: local-only and pooled models on the federation's own splits."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedmed.commands.federation import federation_config
from fedmed.commands.run import add_run_options
from fedmed.outputs import write_json_atomic
from fedmed.state import state_dir
from fedmed.studies.baselines import run_baselines
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings

console = Console()


def cmd_baseline(args: argparse.Namespace) -> int:
    config = federation_config(args.federation, args)
    pack = get_task(config.task)
    data_dir = Path(config.data_dir) if config.data_dir else None
    sites = config.site_list(pack.site_names(data_dir))
    settings = TrainSettings.for_pack(config, pack, seed=config.seed)
    result = run_baselines(
        pack, sites, data_dir, config.num_server_rounds * settings.local_epochs, settings
    )
    out = (
        Path(config.run_dir)
        if config.run_dir
        else state_dir("runs") / f"{config.federation}-baseline"
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "baseline.json", {"federation": config.federation, **result.to_json()})
    table = Table(
        title=f"{config.federation}: {pack.primary_metric} by training regime and test site"
    )
    table.add_column("trained on")
    for site in sites:
        table.add_column(site, justify="right")
    table.add_column("mean", justify="right")
    metric = pack.primary_metric
    for name, per_site in result.scores.items():
        table.add_row(
            "local " + name if name != "pooled" else "pooled",
            *(f"{per_site[s][metric]:.3f}" for s in sites),
            f"{result.mean(name)[metric]:.3f}",
        )
    console.print(table)
    console.print(f"written: {out / 'baseline.json'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "baseline",
        help="local-only and pooled baselines on the federation's splits",
        description="Train one model per site on its own data (local-only) and one on all "
        "sites' training data (pooled); evaluate each on every site's test split.",
    )
    parser.add_argument("federation", type=Path, help="federation folder, e.g. examples/heart")
    add_run_options(parser)
    parser.set_defaults(func=cmd_baseline)
