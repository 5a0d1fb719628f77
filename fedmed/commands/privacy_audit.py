"""``fedmed audit privacy``: the empirical privacy audit of a federation folder.

The federation folder and ``--set`` are read exactly as ``fedmed run`` reads them
(:func:`fedmed.commands.federation.federation_config`); the audit itself is
:mod:`fedmed.studies.privacy_audit`. Results go to ``privacy-audit.json`` in ``--out``
(default: a new folder under ``<state>/audits``), where ``fedmed audit report`` finds them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmed.audit.report import PRIVACY_AUDIT_FILE
from fedmed.commands.federation import federation_config
from fedmed.errors import ConfigError
from fedmed.outputs import format_epsilon, json_safe, write_json_atomic
from fedmed.state import state_dir
from fedmed.studies.privacy_audit import audit_federation

console = Console(stderr=True)  # stdout carries only the --json document


def audit_table(document: dict[str, Any]) -> Table:
    """Per site: accounted ε beside the canary lower bound and the membership attack."""
    dp = document["dp"]
    mechanism = f"DP-SGD, target ε {dp['target_epsilon']:g}" if dp["enabled"] else "no DP"
    table = Table(title=f"{document['federation']}: empirical privacy audit ({mechanism})")
    columns = (
        "site",
        "ε accounted",
        f"ε lower bound ({document['confidence']:.0%})",
        "right / guesses (canaries)",
        "MIA AUC",
        f"TPR at {document['low_fpr']:.1%} FPR",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, found in document["per_site"].items():
        table.add_row(
            site,
            format_epsilon(found["epsilon_accounted"]),
            f"{found['epsilon_lower_bound']:.3f}",
            f"{found['correct_guesses']} / {found['guesses']} ({found['canaries']})",
            f"{found['mia_auc']:.3f}",
            f"{found['tpr_at_0.1pct_fpr']:.3f}",
        )
    table.caption = (
        "a lower bound is evidence, not proof: the real ε may be far above it "
        "(docs/auditor-guide.md §10)"
    )
    return table


def output_folder(args: argparse.Namespace, federation: str) -> Path:
    """``--out``, which must be new or empty, else a new folder under ``<state>/audits``."""
    if args.audit_out is None:
        return state_dir("audits") / f"{federation}-privacy-{time.strftime('%Y%m%d-%H%M%S')}"
    out: Path = args.audit_out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: not an empty folder; an audit writes a new one")
    return out


def cmd_privacy(args: argparse.Namespace) -> int:
    if args.epsilon is not None:
        args.dp = True  # a target ε is a request for DP, whatever the folder says
    config = federation_config(args.federation, args)
    out = output_folder(args, config.federation)
    document = audit_federation(config, out, args.site or None, args.canaries, args.canary_seed)
    write_json_atomic(out / PRIVACY_AUDIT_FILE, document)
    if args.json:
        print(json.dumps(json_safe(document), indent=2))
    else:
        console.print(audit_table(document))
    console.print(f"privacy audit: [bold]{out / PRIVACY_AUDIT_FILE}[/bold]")
    return 0


def register_privacy_audit(actions: argparse._SubParsersAction) -> None:
    """The ``privacy`` action of ``fedmed audit``."""
    privacy = actions.add_parser(
        "privacy",
        help="empirical privacy audit: canary ε lower bound and membership inference",
        description="Train the federation once per audited site with canaries added to that "
        "site (each with probability 1/2), through the nodes' own DP-SGD rounds, and report "
        "per site the accounted ε, the one-run empirical ε lower bound at 95% confidence "
        "(Steinke, Nasr & Jagielski, NeurIPS 2023) and a loss-based membership-inference "
        "attack on the final model (AUC, TPR at 0.1% FPR).",
    )
    privacy.add_argument("federation", type=Path, help="federation folder, e.g. examples/heart")
    mechanism = privacy.add_mutually_exclusive_group()
    mechanism.add_argument("--epsilon", type=float, help="target ε per site (DP on)")
    mechanism.add_argument(
        "--no-dp", dest="dp", action="store_false", default=None, help="train without DP"
    )
    privacy.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any setting of the federation's [tool.flwr.app.config]",
    )
    privacy.add_argument("--rounds", type=int, help="number of federated rounds")
    privacy.add_argument(
        "--site", action="append", metavar="SITE", help="audit only this site (repeatable)"
    )
    privacy.add_argument(
        "--canaries",
        type=int,
        help="canaries per audited site (default: 3/4 of a table's columns, else 128)",
    )
    privacy.add_argument(
        "--canary-seed", type=int, default=0, help="seed of the canaries' coin flips"
    )
    privacy.add_argument("--json", action="store_true", help="print the results as JSON")
    privacy.add_argument(
        "--out",
        dest="audit_out",
        type=Path,
        metavar="DIR",
        help="new output folder (default: <state>/audits/...)",
    )
    privacy.set_defaults(
        func=cmd_privacy, out=None, strategy=None, seed=None, sites_home=None, client_dp=None
    )
