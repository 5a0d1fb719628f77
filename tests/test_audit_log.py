"""The signed, hash-chained audit log: any changed byte is found, at the right entry."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

import pytest

from fedmed.audit import AuditError, AuditLog, verify_log, verify_tree
from fedmed.audit.entries import head_path
from fedmed.cli import main

PAYLOADS = [
    {"run": "r1", "round": 1, "epsilon": 0.25, "sites": ["a", "b"]},
    {"reason": "privacy budget: ε would reach 1.2 > 1", "nested": {"x": [1, 2.5, None]}},
    {"documents": 12, "phi_found": {"NAME": 3, "DATE": 7}, "report_sha256": "ab" * 32},
    {},
]


def make_log(folder: Path, party: str = "site:a") -> Path:
    log = AuditLog.open(folder / "audit.jsonl", folder / "keys", party)
    for kind, payload in zip(["dp-release", "refusal", "deid-batch", "round"], PAYLOADS,
                             strict=True):
        log.append(kind, payload)
    return folder / "audit.jsonl"


def line_of(data: bytes, position: int) -> int:
    return data[:position].count(b"\n") + 1


def test_intact_log_verifies_and_key_is_private(tmp_path: Path) -> None:
    path = make_log(tmp_path)
    check = verify_log(path)
    assert check.ok and len(check.entries) == 5 and check.party == "site:a"
    assert [e["kind"] for e in check.entries][0] == "log-start"
    assert os.stat(tmp_path / "keys" / "audit-ed25519.pem").st_mode & 0o777 == 0o600
    reopened = AuditLog.open(path, tmp_path / "keys", "site:a")  # verifies, then extends
    reopened.append("run-end", {"status": "completed"})
    assert verify_log(path).ok and len(verify_log(path).entries) == 6


@pytest.mark.parametrize("mask", [0x01, 0x20])  # digit/letter change; hex case
def test_every_single_byte_change_fails_at_its_entry(tmp_path: Path, mask: int) -> None:
    path = make_log(tmp_path)
    original = path.read_bytes()
    for position in range(len(original)):
        changed = bytearray(original)
        changed[position] ^= mask
        path.write_bytes(bytes(changed))
        check = verify_log(path)
        assert not check.ok, f"byte {position} ^ {mask:#x} went unnoticed"
        assert check.line == line_of(original, position), (position, check.reason)
    path.write_bytes(original)
    assert verify_log(path).ok


def test_removed_reordered_and_cut_entries_are_found(tmp_path: Path) -> None:
    path = make_log(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    cases = {
        "middle entry removed": (lines[:2] + lines[3:], 3),
        "entries swapped": (lines[:1] + [lines[2], lines[1]] + lines[3:], 2),
        "last entry removed": (lines[:-1], len(lines)),
        "last newline removed": (lines[:-1] + [lines[-1].rstrip(b"\n")], len(lines)),
        "entry appended twice": (lines + lines[-1:], len(lines) + 1),
    }
    for name, (content, line) in cases.items():
        path.write_bytes(b"".join(content))
        check = verify_log(path)
        assert not check.ok and check.line == line, (name, check)


def test_cut_tail_with_an_old_head_is_caught_by_the_coordinators_witness(tmp_path: Path) -> None:
    site = make_log(tmp_path / "site")
    lines = site.read_bytes().splitlines(keepends=True)
    log = AuditLog.open(site, tmp_path / "site" / "keys", "site:a")
    old_head = head_path(site).read_bytes()
    witnessed = log.append("dp-release", {"round": 2})
    coordinator = AuditLog.open(tmp_path / "run" / "coordinator.jsonl", tmp_path / "ckeys",
                                "coordinator")
    coordinator.append("round", {"round": 2, "site_heads": {"a": asdict(witnessed)}})
    # The attacker removes the last entry and restores the head file saved before it.
    site.write_bytes(b"".join(lines))
    head_path(site).write_bytes(old_head)
    assert verify_log(site).ok  # alone, an old head cannot be told from a new one
    checks = {c.path.name: c for c in verify_tree([tmp_path])}
    assert checks["coordinator.jsonl"].ok
    bad = checks["audit.jsonl"]
    assert not bad.ok and bad.line == len(lines) + 1 and "witnessed" in bad.reason


def test_opening_a_tampered_log_refuses_to_extend_it(tmp_path: Path) -> None:
    path = make_log(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"refusal", b"refusaL"))
    with pytest.raises(AuditError, match="line 3"):
        AuditLog.open(path, tmp_path / "keys", "site:a")
    os.chmod(tmp_path / "keys" / "audit-ed25519.pem", 0o644)
    with pytest.raises(AuditError, match="readable by others"):
        AuditLog.open(tmp_path / "other.jsonl", tmp_path / "keys", "site:a")


def test_cli_verify_exit_codes_name_file_and_line(tmp_path: Path) -> None:
    make_log(tmp_path / "a")
    bad = make_log(tmp_path / "b" / "deep")
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["audit", "verify", str(tmp_path)]) == 0
    assert "2 of 2 audit logs intact" in out.getvalue()
    data = bytearray(bad.read_bytes())
    position = data.index(b'"deid-batch"') + 3
    data[position] ^= 0x01
    bad.write_bytes(bytes(data))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["audit", "verify", str(tmp_path)]) == 1
    assert f"FAIL  {bad}: line 4:" in out.getvalue()
    assert main(["audit", "verify", str(tmp_path / "missing")]) == 2
