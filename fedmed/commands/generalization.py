"""``fedmed generalization``: the FLamby-style cross-site table for one federation."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rich.console import Console

from fedmed.commands.run import add_privacy_options, add_run_options, federation_config
from fedmed.generalization import study, summarise, to_markdown
from fedmed.outputs import write_json_atomic
from fedmed.state import state_dir
from fedmed.tasks import get_task

console = Console()


def cmd_generalization(args: argparse.Namespace) -> int:
    config = federation_config(args.federation, args)
    if args.dp is None:  # local and pooled baselines train without noise: compare like with like
        config = dataclasses.replace(config, dp=False)
    pack = get_task(config.task)
    out = args.out.resolve() if args.out else state_dir("studies") / config.federation
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(config.seed, config.seed + args.seeds)
    raw = study(config, seeds, args.strategies.split(","), out, args.leave_one_out)
    privacy = f"federations with DP-SGD at ε = {config.epsilon:g}" if config.dp else "no DP"
    title = f"{config.federation} ({privacy})"
    markdown = "".join(to_markdown(summarise(raw, metric), title) + "\n" for metric in pack.metrics)
    write_json_atomic(out / "generalization.json", raw)
    (out / "generalization.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    console.print(f"written: {out / 'generalization.md'}")
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
        "--strategies", default="fedavg,fedprox,fedadam", help="comma-separated strategies"
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
