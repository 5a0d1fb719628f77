"""Gather what a privacy officer needs into one JSON document (the report's data).

Inputs are folders: site homes (a folder with ``policy.toml`` or ``ledger.json``),
run directories and anything holding audit logs. Everything is read, nothing is
trusted: every ``*.jsonl`` log is verified (:func:`fedmed.audit.verify.verify_tree`)
and each site's ε is recomputed from its ledger's history, not copied from the
ledger's own ``epsilon_after`` — the report says if the two disagree.
:mod:`fedmed.audit.report_html` renders this document for people.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fedmed.audit.verify import LogCheck, verify_tree
from fedmed.errors import FedmedError
from fedmed.privacy.ledger import LEDGER_FILE, Ledger
from fedmed.privacy.policy import POLICY_FILE, load_policy

SITE_LOG = "audit.jsonl"


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
    }


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
    """One site's policy, releases, ε, participation and log status."""
    site: dict[str, Any] = {"site": home.name, "home": str(home), "problems": []}
    try:
        policy = load_policy(home / POLICY_FILE)
        site["policy"] = policy.to_json()
    except FedmedError as exc:
        policy = None
        site["policy"] = None
        site["problems"].append(str(exc))
    releases: list[dict[str, Any]] = []
    try:
        ledger = Ledger.load(home / LEDGER_FILE)
        site["site"] = ledger.site
        releases = [entry.to_json() for entry in ledger.releases]
        if policy is not None:
            spent = ledger.spent(policy.delta, policy.accountant)
            site["spent_epsilon"] = spent if math.isfinite(spent) else None
            recorded = ledger.releases[-1].epsilon_after if ledger.releases else 0.0
            if not _same(recorded, spent):
                site["problems"].append(
                    f"ledger's last recorded epsilon {recorded:.4f} differs from the epsilon "
                    f"recomputed from its history ({spent:.4f}) under the current policy"
                )
    except FedmedError as exc:
        site["problems"].append(str(exc))
    site["releases"] = releases
    site["audit"] = _log_summary(log) if log else None
    if log is None:
        site["problems"].append(f"no audit log ({SITE_LOG}) in the site home")
    entries = log.entries if log else []
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
    site["deid_batches"] = sum(1 for e in entries if e["kind"] == "deid-batch")
    return site


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
