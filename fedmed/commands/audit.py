"""``fedmed audit verify`` and ``fedmed audit report``: offline checks for auditors."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmed.audit.verify import verify_federation
from fedmed.commands.privacy_audit import register_privacy_audit
from fedmed.deploy.kit import load_coordinator_kit
from fedmed.errors import FedmedError


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 if every log under the folders is intact (and, with ``--kit``, signed by its
    provisioned key), 1 naming each bad file and line. Keys not anchored by a kit are
    listed as trusted on first use; witnessed or provisioned sites without a log here are
    listed as not checked."""
    missing = [str(p) for p in args.folders if not p.exists()]
    if missing:
        raise FedmedError(f"audit verify: not found: {', '.join(missing)}")
    anchors = load_coordinator_kit(args.kit).trust_anchors() if args.kit else None
    verification = verify_federation(args.folders, anchors)
    checks = verification.checks
    if not checks:
        print(f"no audit logs (*.jsonl) found under {', '.join(map(str, args.folders))}")
        return 1
    for check in checks:
        if check.ok:
            print(f"OK    {check.path}  ({check.party}, {len(check.entries)} entries)")
        else:
            where = f"line {check.line}: " if check.line is not None else ""
            print(f"FAIL  {check.path}: {where}{check.reason}")
    for note in verification.not_checked:
        print(f"NOT CHECKED  {note}")
    first_use = sorted({(c.party, c.key) for c in checks if c.key and not c.anchored})
    for party, key in first_use:
        print(f"TRUSTED ON FIRST USE  {party or '(unnamed)'}: key {key} (stored beside its log)")
    bad = sum(not c.ok for c in checks)
    anchored = f", keys anchored by {anchors.source}" if anchors else ""
    print(f"{len(checks) - bad} of {len(checks)} audit logs intact{anchored}")
    return 1 if bad else 0


def cmd_report(args: argparse.Namespace) -> int:
    from fedmed.audit.report_html import write_report

    data = write_report(args.folders, args.out)
    print(f"report: {args.out} (data: {args.out.with_suffix('.json')})")
    return 0 if data["verification"]["ok"] else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="verify audit logs; write the privacy compliance report",
        description="Offline checks of the signed, hash-chained audit logs of sites and "
        "coordinators, and the compliance report for privacy officers.",
    )
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        help="check chain and signatures of every *.jsonl log under the folders",
        description="Check hash chain, Ed25519 signatures, exact bytes and the signed head of "
        "every *.jsonl audit log under the folders (recursively), every site log head the "
        "coordinator witnessed, and each site's ledger against its signed releases. Exit 0 "
        "if all are intact, 1 otherwise, naming each file and the line of its first bad "
        "entry. Without --kit each log's key is trusted on first use (listed).",
    )
    verify.add_argument("folders", type=Path, nargs="+", metavar="DIR")
    verify.add_argument(
        "--kit",
        type=Path,
        help="the coordinator kit (or the folder fedmed provision wrote): every log must be "
        "signed by the audit key provisioned for its party",
    )
    verify.set_defaults(func=cmd_verify)
    report = actions.add_parser(
        "report",
        help="write the HTML compliance report (+ JSON beside it)",
        description="Collect site homes (policy, ledger), run directories and audit logs "
        "under the folders into an HTML report for a privacy officer, with the same data "
        "as JSON beside it. Exit 1 if any audit log fails verification.",
    )
    report.add_argument("folders", type=Path, nargs="+", metavar="DIR")
    report.add_argument("--out", type=Path, required=True, help="report file (.html)")
    report.set_defaults(func=cmd_report)
    register_privacy_audit(actions)
