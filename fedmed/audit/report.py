"""Gather what a privacy officer needs into one JSON document (the report's data).

Inputs are folders: site homes (a folder with ``policy.toml`` or ``ledger.json``),
run directories and anything holding audit logs. Everything is read, nothing is
trusted: every ``*.jsonl`` log is verified (:func:`fedmed.audit.verify.verify_tree`)
and each site's ε is recomputed from the signed ``dp-release`` entries of its audit
log (the source of truth; from the ledger's history only when a home has no log),
never copied from a recorded ``epsilon_after``. The report says when ``ledger.json``
disagrees with the signed entries, and lists each site's signed ``policy-change``
entries (a raised budget shows with its time).
:mod:`fedmed.audit.report_html` renders this document for people.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedmed.audit.ledger_check import SITE_LOG, signed_releases
from fedmed.audit.verify import LogCheck, verify_tree
from fedmed.errors import FedmedError
from fedmed.privacy.ledger import (
    LEDGER_FILE,
    RELEASE_FIELDS,
    Ledger,
    ledger_disagreement,
    signed_epsilon,
)
from fedmed.privacy.policy import POLICY_FILE, Policy, load_policy


def find_site_homes(roots: Iterable[Path]) -> list[Path]:
    """Folders under ``roots`` that hold a site's policy or ledger."""
    homes: set[Path] = set()
    for root in roots:
        root = Path(root)
        for name in (POLICY_FILE, LEDGER_FILE):
            candidates = [root / name] if (root / name).is_file() else []
            homes.update(p.parent.resolve() for p in [*candidates, *root.rglob(name)])
    return sorted(homes)


def gather(roots: Sequence[Path]) -> dict[str, Any]:
    """The report's data for everything under ``roots``."""
    roots = [Path(r).resolve() for r in roots]
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise FedmedError(f"report: folder(s) not found: {', '.join(missing)}")
    checks = verify_tree(roots)
    by_path = {c.path.resolve(): c for c in checks}
    homes = find_site_homes(roots)
    sites = [_site(home, by_path.get((home / SITE_LOG).resolve())) for home in homes]
    coordinators = [_coordinator(c) for c in checks if c.party == "coordinator"]
    return {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "roots": [str(r) for r in roots],
        "verification": {
            "ok": all(c.ok for c in checks) and bool(checks),
            "logs": [_log_summary(c) for c in checks],
        },
        "sites": sites,
        "coordinator": coordinators,
        "privacy_audits": privacy_audits(roots),
    }


PRIVACY_AUDIT_FILE = "privacy-audit.json"
"""What ``fedmed audit privacy`` writes (:mod:`fedmed.studies.privacy_audit`)."""


def privacy_audits(roots: Iterable[Path]) -> list[dict[str, Any]]:
    """Every empirical privacy audit under ``roots``: its settings and, per site, the
    accounted ε beside the canary lower bound and the membership attack. An audit file
    that cannot be read is listed with the reason instead of being skipped."""
    audits = []
    paths = sorted({p.resolve() for root in roots for p in Path(root).rglob(PRIVACY_AUDIT_FILE)})
    for path in paths:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            per_site = dict(document["per_site"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            audits.append({"path": str(path), "problem": f"unreadable audit file: {exc}"})
            continue
        audits.append(
            {
                "path": str(path),
                "federation": document.get("federation"),
                "dp": document.get("dp") or {},
                "training": document.get("training") or {},
                "confidence": document.get("confidence"),
                "per_site": per_site,
            }
        )
    return audits


def _log_summary(check: LogCheck) -> dict[str, Any]:
    return {
        "path": str(check.path),
        "ok": check.ok,
        "line": check.line,
        "reason": check.reason,
        "party": check.party,
        "key": check.key,
        "entries": len(check.entries),
    }


def _site(home: Path, log: LogCheck | None) -> dict[str, Any]:
    """One site's policy, releases, ε, policy changes, participation and log status."""
    site: dict[str, Any] = {"site": home.name, "home": str(home), "problems": []}
    try:
        policy: Policy | None = load_policy(home / POLICY_FILE)
        site["policy"] = policy.to_json()
    except FedmedError as exc:
        policy = None
        site["policy"] = None
        site["problems"].append(str(exc))
    entries = log.entries if log else []
    signed = signed_releases(entries)
    ledger = _ledger(home, site)
    if log is not None:
        releases = [{name: p.get(name) for name in RELEASE_FIELDS} for p in signed]
        site["epsilon_source"] = "signed dp-release entries of the audit log"
        if ledger is not None:
            difference = ledger_disagreement(ledger.releases, signed)
            if difference is not None:
                site["problems"].append(
                    f"{LEDGER_FILE} disagrees with the signed audit log: {difference[1]}; "
                    "epsilon is recomputed from the signed entries"
                )
    else:
        releases = [entry.to_json() for entry in ledger.releases] if ledger else []
        site["epsilon_source"] = f"{LEDGER_FILE} (no signed audit log to check it against)"
        site["problems"].append(f"no audit log ({SITE_LOG}) in the site home")
    if policy is not None and (log is not None or ledger is not None):
        _spent(site, policy, signed if log is not None else None, ledger)
    site["releases"] = releases
    site["audit"] = _log_summary(log) if log else None
    site["rounds_joined"] = sum(
        1 for e in entries
        if e["kind"] == "round-participation" and e["payload"].get("decision") == "joined"
    )
    site["refusals"] = [
        {"time": e["time"], **{k: e["payload"].get(k) for k in ("run", "round", "task", "reason")}}
        for e in entries
        if e["kind"] == "refusal"
    ]
    site["rounds_refused"] = len(site["refusals"])
    site["policy_changes"] = _policy_changes(entries)
    site["deid_batches"] = _deid_batches(entries)
    return site


DEID_VERSION_KEYS = ("detector", "dicom_profile", "table_rules", "wfdb_header")
"""The version fields a de-id batch report may carry (what decided, per modality)."""


def _deid_batches(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The signed ``deid-batch`` entries: each admitted batch's input kind, task, counts per
    category, quarantined items (pseudonymous ids and reasons), versions and digests. The
    gate's reports hold no PHI, so nothing here does either."""
    batches = []
    for entry in entries:
        if entry["kind"] != "deid-batch":
            continue
        report = entry["payload"]
        batches.append({
            "time": entry["time"],
            **{k: report.get(k) for k in ("batch", "input", "task", "mode", "items",
                                          "phi_counts_by_category", "quarantine",
                                          "input_digest", "released_sha256")},
            "versions": {k: report[k] for k in DEID_VERSION_KEYS if k in report},
        })
    return batches


def _ledger(home: Path, site: dict[str, Any]) -> Ledger | None:
    """The home's ledger, or ``None`` with the reason added to the site's problems."""
    try:
        ledger = Ledger.load(home / LEDGER_FILE)
    except FedmedError as exc:
        site["problems"].append(str(exc))
        return None
    site["site"] = ledger.site
    return ledger


def _spent(
    site: dict[str, Any],
    policy: Policy,
    signed: list[dict[str, Any]] | None,
    ledger: Ledger | None,
) -> None:
    """``spent_epsilon`` from the signed releases (the ledger's history without a log),
    and a problem if the last recorded ``epsilon_after`` differs from it."""
    try:
        if signed is not None:
            spent = signed_epsilon(signed, policy.delta, policy.accountant)
            recorded = _recorded_epsilon(signed[-1].get("epsilon_after")) if signed else 0.0
        elif ledger is not None:
            spent = ledger.spent(policy.delta, policy.accountant)
            recorded = ledger.releases[-1].epsilon_after if ledger.releases else 0.0
        else:
            return
    except FedmedError as exc:
        site["problems"].append(str(exc))
        return
    site["spent_epsilon"] = spent if math.isfinite(spent) else None
    if not _same(recorded, spent):
        site["problems"].append(
            f"last recorded epsilon {recorded:.4f} differs from the epsilon recomputed "
            f"from the release history ({spent:.4f}) under the current policy"
        )


def _recorded_epsilon(value: Any) -> float:
    """A signed ``epsilon_after`` (``null`` is unbounded)."""
    return math.inf if value is None else float(value)


def _policy_changes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The signed ``policy-change`` entries: when each policy digest was first seen, its
    budget and the budget before it (``previous_*`` are ``None`` for the first)."""
    keys = ("sha256", "epsilon", "delta", "previous_sha256", "previous_epsilon", "previous_delta")
    return [
        {"time": e["time"], **{k: e["payload"].get(k) for k in keys}}
        for e in entries
        if e["kind"] == "policy-change"
    ]


def _same(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _coordinator(check: LogCheck) -> dict[str, Any]:
    """Runs, rounds and refusals recorded in one coordinator log."""
    runs: dict[str, dict[str, Any]] = {}
    refusals: list[dict[str, Any]] = []
    rounds = 0
    client_privacy: dict[str, Any] = {}
    for entry in check.entries:
        payload = entry["payload"]
        if entry["kind"] == "run-start":
            runs[payload.get("run", "")] = {
                "run": payload.get("run"),
                "task": payload.get("task"),
                "sites": payload.get("sites"),
                "started": entry["time"],
                "config_sha256": payload.get("config_sha256"),
                "code": payload.get("code"),
                "status": "running or interrupted",
            }
        elif entry["kind"] == "run-end" and payload.get("run") in runs:
            runs[payload["run"]].update(status=payload.get("status"), ended=entry["time"])
            client_privacy = payload.get("client_privacy") or client_privacy
        elif entry["kind"] == "refusal":
            refusals.append({"time": entry["time"], **payload})
        elif entry["kind"] == "round":
            rounds += 1
    return {
        "log": str(check.path),
        "ok": check.ok,
        "key": check.key,
        "runs": list(runs.values()),
        "rounds": rounds,
        "refusals": refusals,
        "client_privacy": client_privacy,
    }
