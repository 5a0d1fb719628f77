"""``fedmed ledger show``: a site's privacy budget and every release recorded against it.

The ledger is checked against the signed ``dp-release`` entries of the site's audit
log first (:mod:`fedmed.audit.ledger_check`): if they disagree — the ledger was
edited, reset or replaced — the command says so and exits non-zero instead of
showing an ε lower than the signed log proves.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmed.audit.ledger_check import SITE_LOG, ledger_problem, signed_releases
from fedmed.audit.verify import verify_log
from fedmed.errors import PrivacyRefusal
from fedmed.outputs import format_epsilon, json_safe
from fedmed.privacy.ledger import LEDGER_FILE, Ledger, signed_epsilon
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
    Spent ε is recomputed from the signed log when the home has one; PrivacyRefusal if
    that log is not intact or the ledger disagrees with it.
    """
    if not Path(site_home).is_dir():
        raise PrivacyRefusal(f"{site_home}: site home not found")
    policy = load_policy(Path(site_home) / POLICY_FILE)
    ledger = Ledger.load(Path(site_home) / LEDGER_FILE)
    spent = ledger.spent(policy.delta, policy.accountant)
    if (Path(site_home) / SITE_LOG).is_file():
        log = verify_log(Path(site_home) / SITE_LOG)
        if not log.ok:
            raise PrivacyRefusal(f"{log.path}: audit log not intact ({log.describe()})")
        problem = ledger_problem(log.path, log.party, log.entries)
        if problem is not None:
            raise PrivacyRefusal(f"{problem.reason}; the ledger cannot be trusted")
        spent = signed_epsilon(signed_releases(log.entries), policy.delta, policy.accountant)
    releases = [{key: entry.to_json()[key] for key in RELEASE_KEYS} for entry in ledger.releases]
    return json_safe(
        {
            "site": ledger.site,
            "budget": {"epsilon": policy.epsilon, "delta": policy.delta},
            "spent": {"epsilon": spent},
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
        description="Print the site's budget, the ε spent (recomputed with the policy's "
        "accountant from the signed dp-release entries of the site's audit log) and every "
        "release; fails if ledger.json disagrees with the signed log.",
    )
    show.add_argument("--site-home", type=Path, required=True, help="the site home folder")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_ledger_show)
