"""A site home's ``ledger.json`` checked against the signed log beside it.

The site's audit log (``audit.jsonl``) is the record of privacy spent: every release
is a signed ``dp-release`` entry. ``ledger.json`` is the node's cache of the same
releases, and anyone can edit it. :func:`ledger_problem` compares the two
(:func:`fedmed.privacy.ledger.ledger_disagreement`); ``fedmed audit verify``, the
compliance report and ``fedmed ledger show`` fail on any difference, and the ε they
show is recomputed from the signed entries (:func:`signed_releases`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmed.errors import FedmedError
from fedmed.privacy.ledger import LEDGER_FILE, Ledger, ledger_disagreement

SITE_LOG = "audit.jsonl"
RELEASE_KIND = "dp-release"


def signed_releases(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The payloads of the ``dp-release`` entries of a verified log, in order."""
    return [entry["payload"] for entry in entries if entry["kind"] == RELEASE_KIND]


@dataclass(frozen=True)
class LedgerProblem:
    """Why a site's ledger disagrees with its signed log; ``line`` is the log line of the
    first signed release that differs (``None``: a ledger release with no signed entry)."""

    site: str
    reason: str
    line: int | None


def ledger_problem(
    log_path: Path, party: str, entries: list[dict[str, Any]]
) -> LedgerProblem | None:
    """The disagreement between a site log (``entries``: verified, intact) and the
    ``ledger.json`` beside it; ``None`` when they agree, or when ``log_path`` is not a
    site home's log (no ledger beside it)."""
    ledger_path = Path(log_path).parent / LEDGER_FILE
    if Path(log_path).name != SITE_LOG or not ledger_path.is_file():
        return None
    site = party.removeprefix("site:") or Path(log_path).parent.name
    try:
        ledger = Ledger.load(ledger_path)
    except FedmedError as exc:
        return LedgerProblem(site, f"site {site}: {exc}", None)
    releases = [entry for entry in entries if entry["kind"] == RELEASE_KIND]
    difference = ledger_disagreement(ledger.releases, [e["payload"] for e in releases])
    if difference is None:
        return None
    index, why = difference
    line = releases[index]["seq"] + 1 if index < len(releases) else None
    reason = f"site {site}: {LEDGER_FILE} disagrees with the signed dp-release entries: {why}"
    return LedgerProblem(site, reason, line)
