"""``fedmed site init``: create a hospital's site home with the policy its privacy officer set.

Without this a home is created on first use with the default policy (ε budget 10 at
δ = 1e-5, σ ≥ 0.5, only the first job's task). A site that wants another budget — or,
for a study on public data, no cap at all (``--epsilon inf``, the only way a run
without DP noise is accepted) — creates its home before the first run. An existing
home is never overwritten: its ledger is the record of privacy already spent.

``fedmed site backup`` / ``fedmed site restore``: one checked archive of a home and its
safe, verified restore (the logic is in :mod:`fedmed.clients.site_backup`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedmed.clients.site_backup import (
    BackupIntegrityError,
    backup,
    read_info,
    restore,
    witnessed_head_in,
)
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


def cmd_site_backup(args: argparse.Namespace) -> int:
    """Exit 0 with the archive written, 1 if the home's audit log is broken, 2 on bad input."""
    try:
        info = backup(args.site_home, args.out)
    except BackupIntegrityError as exc:
        print(f"fedmed: refused: {exc}", file=sys.stderr)
        return 1
    print(f"backup of site {info.site} ({info.files} files) written to {args.out}")
    print(f"audit-log head it holds: seq {info.seq}, hash {info.hash}")
    return 0


def cmd_site_restore(args: argparse.Namespace) -> int:
    """Exit 0 restored, 1 if the archive or witnessed head does not check out, 2 on bad input."""
    witness = None
    if args.witness is not None:
        site = args.site or read_info(args.archive).site
        witness = (site, *witnessed_head_in(args.witness, site))
    try:
        info, aside = restore(
            args.archive, args.site_home, force=args.force,
            witness=witness[1:] if witness else None,
        )
    except BackupIntegrityError as exc:
        print(f"fedmed: refused: {exc}", file=sys.stderr)
        return 1
    if aside is not None:
        print(f"the home that was at {args.site_home} was moved aside to {aside}")
    print(f"site home of {info.site} restored to {args.site_home} from {args.archive} "
          f"(backup of {info.created})")
    print(f"audit log verified; head seq {info.seq}, hash {info.hash}")
    if witness:
        print(f"it holds the head the coordinator witnessed for {witness[0]} (seq {witness[1]})")
    else:
        print("the coordinator's witnessed head was NOT checked (no --witness): if the "
              "coordinator saw a later head, the site will refuse to train")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    site = subparsers.add_parser(
        "site",
        help="create, back up or restore a hospital's site home",
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
    back = actions.add_parser(
        "backup",
        help="archive a site home (after verifying its audit log)",
        description="Verify the site home's audit log, then write the whole home as one "
        "tar.gz (mode 0600: it holds the site's private audit key) with a manifest of its "
        "audit-log head and file hashes. Exit 1 if the log is broken, 2 on bad input.",
    )
    back.add_argument("--site-home", type=Path, required=True, help="the site home")
    back.add_argument("--out", type=Path, required=True, help="archive to write (.tar.gz)")
    back.set_defaults(func=cmd_site_backup)
    rest = actions.add_parser(
        "restore",
        help="restore a site home from a backup archive, checking it",
        description="Extract a backup safely, check its files against the manifest and its "
        "audit log, and (with --witness) that it holds the head the coordinator witnessed. "
        "Nothing is changed until the checks pass. Exit 1 if a check fails, 2 on bad input.",
    )
    rest.add_argument("archive", type=Path, metavar="FILE", help="archive from 'site backup'")
    rest.add_argument("--site-home", type=Path, required=True, help="folder to restore into")
    rest.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty home: it is moved aside to DIR.replaced-<time>, not deleted",
    )
    rest.add_argument(
        "--witness",
        type=Path,
        metavar="WITNESS_JSON",
        help="the coordinator's witness record; the backup must hold the head witnessed",
    )
    rest.add_argument("--site", help="the site's name in the witness record (default: the "
                      "backup's site)")
    rest.set_defaults(func=cmd_site_restore)
