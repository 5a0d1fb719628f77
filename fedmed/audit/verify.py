"""Offline verification of audit logs: chain, signatures, canonical bytes, signed head.

What a passing check proves, for a log ``X.jsonl`` with ``X.jsonl.pub`` beside it:

- every line is the canonical JSON of its entry, so no byte can change without
  changing a hashed or signed value (whitespace, key order, escapes, number
  spelling and hex case included);
- entry ``n`` has ``seq = n`` and carries the hash of entry ``n - 1``: nothing was
  inserted, removed or reordered in the middle;
- every entry hash is recomputed and every signature checks against the public key,
  which entry 0 names by fingerprint;
- the signed head ``X.jsonl.head`` names an entry that is present with that hash:
  entries were not cut from the end below the last signed head. (Replacing the head
  by an older signed copy together with the tail is the one change a single log
  cannot show; :func:`verify_tree` also checks the log heads that other parties
  witnessed and signed in their own logs — the coordinator records every site's
  head each round, of its releases and of its signed refusals — so a truncated or
  rolled-back site log fails when verified beside the coordinator's log.)

Which keys are trusted. Alone, a log proves only that one key signed it: the key
stored beside it is trusted on first use, and :func:`verify_federation` says so. Two
things anchor keys: a head witnessed by the coordinator names the site's key, so a
site log re-signed under a fresh key fails beside the coordinator's log (a witnessed
site whose log is not among those checked is listed as not checked, never skipped
silently); and with the coordinator kit (``fedmed audit verify --kit``,
:class:`fedmed.audit.anchors.TrustAnchors`) every log must be signed by the key
provisioned for its party — a replaced or unknown key fails.

:func:`verify_tree` also checks each site home's ``ledger.json`` against the signed
``dp-release`` entries of the ``audit.jsonl`` beside it
(:mod:`fedmed.audit.ledger_check`): a ledger edited, reset or replaced by hand fails
that site's log, naming the first release that differs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedmed.audit.anchors import TrustAnchors
from fedmed.audit.entries import (
    ENTRY_DOMAIN,
    ENTRY_KEYS,
    GENESIS,
    canonical,
    entry_hash,
    head_message,
    head_path,
    holds_head,
    pub_path,
)
from fedmed.audit.keys import AuditError, fingerprint, load_public_key, signature_valid

HEX_SIGNATURE = re.compile(r"[0-9a-f]{128}")
HEX_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LogCheck:
    """The result of verifying one log. ``line`` is the 1-based line of the first bad entry."""

    path: Path
    ok: bool
    line: int | None = None
    reason: str = ""
    key: str = ""
    party: str = ""
    entries: list[dict[str, Any]] = field(default_factory=list)
    anchored: bool = False  # its key is the one a kit provisioned (else trusted on first use)

    @property
    def last_seq(self) -> int:
        return self.entries[-1]["seq"] if self.entries else -1

    @property
    def last_hash(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    def describe(self) -> str:
        if self.ok:
            return f"intact, {len(self.entries)} entries"
        where = f"line {self.line}: " if self.line is not None else ""
        return f"first bad entry at {where}{self.reason}"


def verify_log(path: Path) -> LogCheck:
    """Verify one log file (see the module docstring for what is checked)."""
    path = Path(path)
    try:
        public_key = load_public_key(pub_path(path))
        data = path.read_bytes()
    except (AuditError, OSError) as exc:
        return LogCheck(path, False, None, str(exc))
    key = fingerprint(public_key)
    entries: list[dict[str, Any]] = []
    party = ""

    def bad(line: int, reason: str) -> LogCheck:
        return LogCheck(path, False, line, reason, key, party, entries)

    if not data:
        return bad(1, "the log is empty (entry 0 is missing)")
    lines = data.split(b"\n")
    if lines[-1] != b"":
        return bad(len(lines), "the last entry is not terminated by a newline (cut or appended)")
    previous = GENESIS
    for number, raw in enumerate(lines[:-1], start=1):
        seq = number - 1
        try:
            text = raw.decode("ascii")
            entry = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return bad(number, "not a JSON entry")
        problem = _entry_problem(entry, text, seq, previous)
        if problem:
            return bad(number, problem)
        if not signature_valid(
            public_key, bytes.fromhex(entry["sig"]), ENTRY_DOMAIN + entry["hash"].encode("ascii")
        ):
            return bad(number, "signature does not match the party's public key")
        if seq == 0:
            if entry["kind"] != "log-start" or entry["payload"].get("key") != key:
                return bad(number, "entry 0 does not start the log with this public key")
            party = str(entry["payload"].get("party", ""))
        entries.append(entry)
        previous = entry["hash"]
    problem, line = _head_problem(path, public_key, entries)
    if problem:
        return bad(line, problem)
    return LogCheck(path, True, None, "", key, party, entries)


def _entry_problem(entry: Any, text: str, seq: int, previous: str) -> str:
    """Why ``entry`` (parsed from ``text``) is not entry ``seq`` after ``previous``; '' if fine."""
    if not isinstance(entry, dict) or tuple(sorted(entry)) != ENTRY_KEYS:
        return "entry fields are not " + ", ".join(ENTRY_KEYS)
    try:
        if canonical(entry) != text:
            return "entry is not in canonical form (bytes were changed)"
    except ValueError:
        return "entry holds a non-finite number"
    if type(entry["seq"]) is not int or entry["seq"] != seq:
        return (
            f"sequence number {entry['seq']!r} where {seq} was expected "
            "(entries removed, inserted or reordered)"
        )
    if not (isinstance(entry["kind"], str) and isinstance(entry["time"], str)):
        return "kind and time must be strings"
    if not isinstance(entry["payload"], dict):
        return "payload must be an object"
    if entry["prev"] != previous:
        return "does not chain to the previous entry (prev hash differs)"
    if not (isinstance(entry["hash"], str) and HEX_HASH.fullmatch(entry["hash"])):
        return "hash is not 64 lowercase hex digits"
    expected = entry_hash(seq, entry["time"], entry["kind"], entry["payload"], entry["prev"])
    if entry["hash"] != expected:
        return "content does not match its hash"
    if not (isinstance(entry["sig"], str) and HEX_SIGNATURE.fullmatch(entry["sig"])):
        return "signature is not 128 lowercase hex digits"
    return ""


def _head_problem(path: Path, public_key: Any, entries: list[dict[str, Any]]) -> tuple[str, int]:
    """Check the signed head against the entries; ('', 0) when it is consistent."""
    head_file = head_path(path)
    after_last = len(entries) + 1
    try:
        text = head_file.read_text(encoding="ascii")
        head = json.loads(text)
    except FileNotFoundError:
        return f"signed head {head_file.name} is missing (cannot rule out a cut tail)", after_last
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"signed head {head_file.name} is unreadable", after_last
    if (
        not isinstance(head, dict)
        or sorted(head) != ["hash", "seq", "sig"]
        or type(head["seq"]) is not int
        or not isinstance(head["hash"], str)
        or not (isinstance(head["sig"], str) and HEX_SIGNATURE.fullmatch(head["sig"]))
        or canonical(head) + "\n" != text
    ):
        return f"signed head {head_file.name} is malformed", after_last
    if not signature_valid(
        public_key, bytes.fromhex(head["sig"]), head_message(head["seq"], head["hash"])
    ):
        return f"signed head {head_file.name} has a bad signature", after_last
    if head["seq"] >= len(entries) or head["seq"] < 0:
        return (
            f"the signed head names entry {head['seq']} but the log ends at entry "
            f"{len(entries) - 1}: entries were removed from the end",
            after_last,
        )
    if entries[head["seq"]]["hash"] != head["hash"]:
        return "entry named by the signed head has a different hash", head["seq"] + 1
    return "", 0


def find_logs(root: Path) -> list[Path]:
    """Every ``*.jsonl`` audit log under ``root`` (or ``root`` itself), sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.jsonl") if p.is_file())


@dataclass(frozen=True)
class Verification:
    """Every log checked, and what could not be: sites whose heads a checked log
    witnessed, or that the kit provisioned, without a log among those checked."""

    checks: list[LogCheck]
    not_checked: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)


def verify_tree(roots: Iterable[Path]) -> list[LogCheck]:
    """Verify every log under ``roots``, then the heads each log witnessed of the others."""
    return verify_federation(roots).checks


def verify_federation(roots: Iterable[Path], anchors: TrustAnchors | None = None) -> Verification:
    """:func:`verify_tree`, with keys checked against ``anchors`` when given, and the
    witnessed or provisioned sites that have no log among those checked."""
    checks = [verify_log(path) for root in roots for path in find_logs(root)]
    if anchors is not None:
        checks = [_anchored(check, anchors) for check in checks]
    unseen: dict[str, tuple[str, str, int]] = {}  # site → (witness, key, last seq witnessed)
    by_key: dict[str, int] = {c.key: i for i, c in enumerate(checks) if c.ok and c.key}
    for witness in list(checks):
        for site, seen_key, seq, digest in _witnessed_heads(witness):
            index = by_key.get(seen_key)
            if index is None:
                checks, missing = _replaced_keys(checks, witness, site, seen_key)
                if missing and seq >= unseen.get(site, ("", "", -1))[2]:
                    unseen[site] = (witness.path.name, seen_key, seq)
                continue
            if not checks[index].ok:
                continue
            target = checks[index]
            if seq >= len(target.entries):
                reason = (
                    f"entry {seq} (witnessed in {witness.path.name}) is missing: "
                    "entries were removed from the end"
                )
                checks[index] = replace(
                    target, ok=False, line=len(target.entries) + 1, reason=reason
                )
            elif not holds_head(target.entries, seq, digest):
                reason = f"entry {seq} differs from the one witnessed in {witness.path.name}"
                checks[index] = replace(target, ok=False, line=seq + 1, reason=reason)
    not_checked = [
        f"site {site}: {name} witnessed its log up to entry {seq} (key {key}) but no log of "
        f"{site} was checked"
        for site, (name, key, seq) in unseen.items()
    ]
    if anchors is not None:
        seen = {check.party for check in checks}
        not_checked += [
            f"{party}: provisioned in {anchors.source} but no log of it was checked"
            for party in anchors.parties()
            if party not in seen and party.removeprefix("site:") not in unseen
        ]
    return Verification([_with_ledger(check) for check in checks], sorted(set(not_checked)))


def _anchored(check: LogCheck, anchors: TrustAnchors) -> LogCheck:
    """``check``, failed if its key is not the one ``anchors`` provisioned for its party."""
    if not check.ok:
        return check
    problem = anchors.problem(check.party, check.key)
    if problem is None:
        return replace(check, anchored=True)
    return replace(check, ok=False, line=1, reason=problem)


def _replaced_keys(
    checks: list[LogCheck], witness: LogCheck, site: str, seen_key: str
) -> tuple[list[LogCheck], bool]:
    """Fail every checked log of ``site`` (signed by a key other than the witnessed
    ``seen_key``); True when there is no log of ``site`` at all."""
    party = f"site:{site}"
    found = False
    updated = []
    for check in checks:
        if check.party == party:
            found = True
            if check.ok:
                check = replace(
                    check,
                    ok=False,
                    line=1,
                    reason=(
                        f"signed by key {check.key}, but {witness.path.name} witnessed this "
                        f"site's log under key {seen_key}: the log was replaced or re-signed"
                    ),
                )
        updated.append(check)
    return updated, not found


def _with_ledger(check: LogCheck) -> LogCheck:
    """``check``, failed if it is a site log whose ``ledger.json`` disagrees with it."""
    from fedmed.audit.ledger_check import ledger_problem  # the accountant loads Opacus

    problem = ledger_problem(check.path, check.party, check.entries) if check.ok else None
    if problem is None:
        return check
    return replace(check, ok=False, line=problem.line, reason=problem.reason)


def _witnessed_heads(check: LogCheck) -> list[tuple[str, str, int, str]]:
    """(site, key, seq, hash) of the site log heads ``check`` witnessed: its ``round``
    entries' ``site_heads`` and its ``refusal`` entries' ``site_head``."""
    if not check.ok:
        return []
    heads: list[tuple[str, str, int, str]] = []
    for entry in check.entries:
        payload = entry["payload"]
        if entry["kind"] == "round" and isinstance(payload.get("site_heads"), dict):
            seen_heads = list(payload["site_heads"].items())
        elif entry["kind"] == "refusal" and isinstance(payload.get("site_head"), dict):
            seen_heads = [(payload.get("site"), payload["site_head"])]
        else:  # signed, but no witness in it
            continue
        for site, seen in seen_heads:
            seq = seen.get("seq") if isinstance(seen, dict) else None
            if type(seq) is int and seq >= 0:
                heads.append((str(site), str(seen.get("key")), seq, str(seen.get("hash"))))
    return heads
