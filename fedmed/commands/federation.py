"""A federation folder as the commands read it, and the privacy table every run prints.

Shared by ``fedmed run`` (simulation), ``fedmed run --coordinator`` (deployment), the
baselines and the generalization study, so none of them imports another command.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from rich.table import Table

from fedmed.config import FederationConfig, load_federation
from fedmed.errors import ConfigError
from fedmed.outputs import format_epsilon
from fedmed.state import sites_home_path


def federation_config(folder: Path, args: argparse.Namespace) -> FederationConfig:
    """The folder's settings with the command line's overrides applied."""
    settings: dict[str, Any] = load_federation(folder)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        settings[key.strip()] = value.strip()
    for key, value in (
        ("run-dir", args.out and str(args.out.resolve())),
        ("num-server-rounds", args.rounds),
        ("strategy", args.strategy),
        ("seed", args.seed),
        ("sites-home", args.sites_home and str(args.sites_home.resolve())),
        ("dp", getattr(args, "dp", None)),
        ("epsilon", getattr(args, "epsilon", None)),
        ("client-dp", getattr(args, "client_dp", None)),
    ):
        if value is not None:
            settings[key] = value
    config = FederationConfig.from_run_config(settings)
    if not config.sites_home:
        default = sites_home_path(config.federation)
        config = dataclasses.replace(config, sites_home=str(default))
    return config


def privacy_table(metrics: dict[str, Any]) -> Table:
    """Each site's total ε (all runs so far) after this run, with δ and budget.

    A site whose policy or ledger could not be read reports no ε account: its cells say
    so ("no ledger", "no policy") rather than print a missing ε as unbounded. (An ε or
    budget recorded as null is ∞: :func:`fedmed.outputs.json_safe`.)
    """
    table = Table(title="privacy per site: ε spent over all runs on its site home")
    columns = ("site", "ε spent", "δ", "ε budget", "rounds trained", "rounds refused")
    for column in columns:
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, summary in sorted(metrics.get("privacy", {}).items()):
        table.add_row(
            site,
            format_epsilon(summary["epsilon"]) if "epsilon" in summary else "no ledger",
            f"{summary['delta']:g}" if summary.get("delta") is not None else "no ledger",
            (
                format_epsilon(summary["epsilon_budget"])
                if "epsilon_budget" in summary
                else "no policy"
            ),
            str(summary.get("rounds_joined", 0)),
            str(summary.get("rounds_refused", 0)),
        )
    client = metrics.get("client_privacy")
    if client:
        table.caption = (
            f"client-level DP at the coordinator: ε {format_epsilon(client.get('epsilon'))} "
            f"at δ {client.get('delta', float('nan')):g}"
        )
    return table
