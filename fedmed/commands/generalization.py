"""``fedmed generalization``: the FLamby-style cross-site table for one federation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from fedmed.commands.federation import federation_config
from fedmed.commands.run import add_privacy_options, add_run_options
from fedmed.config import FederationConfig
from fedmed.errors import DataError
from fedmed.outputs import write_json_atomic
from fedmed.plots import plot_generalization
from fedmed.state import state_dir
from fedmed.studies.generalization import (
    baseline_recipe,
    default_strategies,
    study,
    summarise,
    to_markdown,
)
from fedmed.studies.recorded_baselines import BaselineSource, TrainedBaselines, load_recorded
from fedmed.tasks import get_task

console = Console()
STUDY_FILE = "generalization.json"


def cmd_generalization(args: argparse.Namespace) -> int:
    if args.dp is None:  # local and pooled baselines train without noise: compare like with like
        args.dp = False  # before parsing, so no DP recipe applies (fedmed.dp_recipes)
    config = federation_config(args.federation, args)
    pack = get_task(config.task)
    out = args.out.resolve() if args.out else state_dir("studies") / config.federation
    seeds = list(range(config.seed, config.seed + args.seeds))
    baselines, header = _baselines_and_header(args, config, seeds)
    out.mkdir(parents=True, exist_ok=True)

    def save(raw: dict) -> None:  # after every seed: an interrupted study keeps what it has
        write_json_atomic(out / STUDY_FILE, {**raw, **header})

    strategies = args.strategies.split(",") if args.strategies else default_strategies(pack)
    raw = study(
        config,
        seeds,
        strategies,
        out,
        baselines,
        with_leave_one_out=args.leave_one_out,
        on_seed_done=save,
        fine_tune_epochs=args.fine_tune_epochs,
    )
    save(raw)
    markdown = render_study(out)
    print(markdown)
    console.print(f"written: {out / 'generalization.md'} and its figures")
    return 0


def _baselines_and_header(
    args: argparse.Namespace, config: FederationConfig, seeds: list[int]
) -> tuple[BaselineSource, dict[str, Any]]:
    """Where the local and pooled rows come from, and the study's self-description.

    The local and pooled models never train with DP, so they take the settings of the same
    study without DP: a pack's DP recipe (``fedmed.dp_recipes``), which ``--dp`` brings into
    ``config``, must not reach them, or a DP study could not borrow them (``--baselines-from``)
    from the study without DP."""
    pack = get_task(config.task)
    without_dp = argparse.Namespace(**{**vars(args), "dp": False})
    recipe = baseline_recipe(federation_config(args.federation, without_dp), pack)
    privacy = f"federations with DP-SGD at ε = {config.epsilon:g}" if config.dp else "no DP"
    task = "" if config.task == config.federation else f", task {config.task}"
    header: dict[str, Any] = {"metrics": list(pack.metrics), "baselines": recipe.to_json()}
    if not args.baselines_from:
        header["title"] = f"{config.federation} ({privacy}{task})"
        return TrainedBaselines(pack, recipe), header
    source = args.baselines_from.resolve() / STUDY_FILE
    recorded = load_recorded(source, recipe, seeds, args.leave_one_out, _warn)
    recorded.spot_check(pack, recipe, seeds[0])
    header["baselines_from"] = recorded.provenance()
    origin = Path(header["baselines_from"]["study"]).parent.name
    header["title"] = f"{config.federation} ({privacy}{task}; local and pooled rows from {origin})"
    return recorded, header


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


def render_study(folder: Path) -> str:
    """``generalization.md`` and one PNG per metric from a study's ``generalization.json``."""
    path = folder / STUDY_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        title, metrics = raw["title"], raw["metrics"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a fedmed generalization study ({exc})") from None
    parts = []
    for metric in metrics:
        summary = summarise(raw, metric)
        figure = plot_generalization(summary, folder / f"generalization-{metric}.png", title)
        parts.append(to_markdown(summary, title) + f"\n![{title}: {metric}]({figure.name})\n")
    markdown = "\n".join(parts)
    (folder / "generalization.md").write_text(markdown, encoding="utf-8")
    return markdown


def cmd_report(args: argparse.Namespace) -> int:
    for folder in args.studies:
        print(render_study(folder))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generalization",
        help="local vs pooled vs federated on every site, plus leave-one-site-out",
        description="Train local-only, pooled and federated models (one federation per "
        "strategy) for several seeds, score each on every site's test split, then repeat "
        "leaving each site out; write generalization.md/.json to --out. Federations run "
        "without DP unless --dp is given (the local and pooled baselines are non-private); "
        "each gets fresh simulated site homes inside --out.",
    )
    parser.add_argument("federation", type=Path, help="federation folder, e.g. examples/heart")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument(
        "--strategies",
        help="comma-separated strategies; 'local-norm' is FedAvg with each site keeping its "
        "normalisation layers (default: fedavg,fedprox,fedadam, plus local-norm where the "
        "model has normalisation layers)",
    )
    parser.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=5,
        help="epochs each site fine-tunes the FedAvg model on its own training split for the "
        "'fine-tuned' regime (default 5; 0: leave the regime out)",
    )
    parser.add_argument(
        "--baselines-from",
        type=Path,
        metavar="STUDY_DIR",
        help="take the local-only and pooled rows from an earlier study of the same "
        "federation (its --out folder) instead of training them again, e.g. for a --dp study "
        "beside the one without DP; refused unless that study trained them on the same "
        "sites, seeds, data and settings",
    )
    parser.add_argument(
        "--leave-one-out",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train without each site and score on it (default: on)",
    )
    add_run_options(parser)
    add_privacy_options(parser)
    parser.set_defaults(func=cmd_generalization)

    report = subparsers.add_parser(
        "report",
        help="re-render generalization studies: Markdown tables and a PNG per metric",
        description="For each study folder (written by 'fedmed generalization --out DIR'), "
        "rewrite generalization.md and generalization-<metric>.png from generalization.json "
        "and print the tables.",
    )
    report.add_argument("studies", type=Path, nargs="+", metavar="STUDY_DIR")
    report.set_defaults(func=cmd_report)
