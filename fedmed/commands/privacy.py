"""``fedmed ledger show``: a site's privacy budget and every release recorded against it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmed.errors import PrivacyRefusal
from fedmed.outputs import format_epsilon, json_safe
from fedmed.privacy.ledger import LEDGER_FILE, Ledger
from fedmed.privacy.policy import POLICY_FILE, load_policy

RELEASE_KEYS = (
    "run", "round", "noise_multiplier", "sample_rate", "steps", "delta", "accountant",
    "epsilon_after",
)
console = Console()


def ledger_document(site_home: Path) -> dict[str, Any]:
    """Site, budget, spent (recomputed from the history), releases: the ledger's shape for
    other tools (docs/architecture.md § Node–coordinator contract).

    An unbounded ε (a budget of ``inf``, or a release without noise) is ``null``.
    """
    if not Path(site_home).is_dir():
        raise PrivacyRefusal(f"{site_home}: site home not found")
    policy = load_policy(Path(site_home) / POLICY_FILE)
    ledger = Ledger.load(Path(site_home) / LEDGER_FILE)
    releases = [{key: entry.to_json()[key] for key in RELEASE_KEYS} for entry in ledger.releases]
    return json_safe(
        {
            "site": ledger.site,
            "budget": {"epsilon": policy.epsilon, "delta": policy.delta},
            "spent": {"epsilon": ledger.spent(policy.delta, policy.accountant)},
            "releases": releases,
        }
    )


def cmd_ledger_show(args: argparse.Namespace) -> int:
    document = ledger_document(args.site_home)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    budget, spent = document["budget"], document["spent"]["epsilon"]
    table = Table(title=f"privacy ledger of {document['site']}")
    for column in ("run", "round", "σ", "q", "steps", "δ", "accountant", "ε after"):
        table.add_column(column, justify="left" if column in ("run", "accountant") else "right")
    for r in document["releases"]:
        table.add_row(
            r["run"], str(r["round"]), f"{r['noise_multiplier']:.3f}", f"{r['sample_rate']:.4f}",
            str(r["steps"]), f"{r['delta']:g}", r["accountant"], format_epsilon(r["epsilon_after"]),
        )
    console.print(table)
    console.print(
        f"spent ε = [bold]{format_epsilon(spent)}[/bold] "
        f"of budget {format_epsilon(budget['epsilon'])} "
        f"at δ = {budget['delta']:g} ({len(document['releases'])} releases)"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    ledger = subparsers.add_parser(
        "ledger",
        help="a site's privacy ledger",
        description="Inspect a site's privacy ledger (every DP release and the ε it spent).",
    )
    actions = ledger.add_subparsers(dest="ledger_command", metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print the site's budget, ε spent and every release",
        description="Print the site's budget, the ε spent (recomputed from the ledger's "
        "history with the policy's accountant) and every release.",
    )
    show.add_argument("--site-home", type=Path, required=True, help="the site home folder")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_ledger_show)
