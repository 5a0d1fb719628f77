"""``fedmed site init``: create a hospital's site home with the policy its privacy officer set.

Without this a home is created on first use with the default policy (ε budget 10 at
δ = 1e-5, σ ≥ 0.5, only the first job's task). A site that wants another budget — or,
for a study on public data, no cap at all (``--epsilon inf``, the only way a run
without DP noise is accepted) — creates its home before the first run. An existing
home is never overwritten: its ledger is the record of privacy already spent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedmed.clients.site_home import SiteHome
from fedmed.privacy.accounting import ACCOUNTANTS
from fedmed.privacy.policy import (
    DEFAULT_DELTA,
    DEFAULT_EPSILON,
    DEFAULT_MIN_NOISE_MULTIPLIER,
    Policy,
)


def cmd_site_init(args: argparse.Namespace) -> int:
    policy = Policy(
        epsilon=args.epsilon,
        delta=args.delta,
        min_noise_multiplier=args.min_noise_multiplier,
        allowed_tasks=tuple(args.task),
        accountant=args.accountant,
    )
    home = SiteHome.create(args.site_home, args.site, policy)
    print(f"site home of {args.site} created at {home.root}")
    print(json.dumps(policy.to_json(), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    site = subparsers.add_parser(
        "site",
        help="create a hospital's site home (policy, ledger, audit key)",
        description="Manage a hospital's site home: its privacy policy, ledger and audit log.",
    )
    actions = site.add_subparsers(dest="site_command", metavar="ACTION")
    init = actions.add_parser(
        "init",
        help="create a site home with the given privacy policy",
        description="Create a site home with this policy. Refuses if the folder exists: "
        "a home is never reset, because its ledger records privacy already spent.",
    )
    init.add_argument("--site-home", type=Path, required=True, help="folder to create")
    init.add_argument("--site", required=True, help="the site's name, e.g. cleveland")
    init.add_argument(
        "--task",
        action="append",
        required=True,
        help="task this site may train (repeatable; '*' allows every task)",
    )
    init.add_argument(
        "--epsilon",
        type=float,
        default=DEFAULT_EPSILON,
        help=f"lifetime ε budget (default {DEFAULT_EPSILON:g}; 'inf' = no cap, allows no-DP runs)",
    )
    init.add_argument(
        "--delta", type=float, default=DEFAULT_DELTA, help=f"δ (default {DEFAULT_DELTA:g})"
    )
    init.add_argument(
        "--min-noise-multiplier",
        type=float,
        default=DEFAULT_MIN_NOISE_MULTIPLIER,
        help=f"smallest σ a job may use (default {DEFAULT_MIN_NOISE_MULTIPLIER:g})",
    )
    init.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp")
    init.set_defaults(func=cmd_site_init)
