"""The append-only, hash-chained, Ed25519-signed audit log of one party.

File format (JSON Lines, one entry per line, each line the canonical JSON of the
entry — sorted keys, no spaces, ASCII, so every byte is determined by the content)::

    {"hash":H,"kind":K,"payload":{...},"prev":P,"seq":N,"sig":S,"time":T}

- ``seq`` counts from 0; entry 0 (``log-start``) names the party and its key.
- ``prev`` is the previous entry's ``hash`` (64 zeros for entry 0).
- ``hash`` is SHA-256 over the canonical JSON of ``{seq, time, kind, payload, prev}``.
- ``sig`` is the lowercase-hex Ed25519 signature of ``"fedmed-audit-entry\\n" + hash``.

Beside ``<name>.jsonl`` live ``<name>.jsonl.pub`` (the public key, PEM) and
``<name>.jsonl.head`` (the signed ``{seq, hash}`` of the last entry, rewritten
atomically after each append), which lets a verifier notice entries removed from
the end — the one change a hash chain alone cannot show.

Kinds written by fedmed: ``log-start``, ``run-start``, ``run-end``, ``round`` (the
coordinator's per-round record with the model hash and the sites' log heads it
saw), ``round-participation``, ``dp-release``, ``refusal``, ``policy-change`` (a site's
``policy.toml`` digest and budget, signed when first seen and whenever it changes),
``run-interrupted`` (the coordinator found a run's ServerApp dead and closed the run:
:mod:`fedmed.deploy.runs`) and ``deid-batch`` (the de-identification gate's batch
reports; any caller may add kinds via :meth:`AuditLog.append`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmed.audit.entries import (
    ENTRY_DOMAIN,
    GENESIS,
    canonical,
    entry_hash,
    head_message,
    head_path,
    pub_path,
)
from fedmed.audit.keys import AuditError, fingerprint, load_or_create_key, public_pem
from fedmed.audit.verify import verify_log
from fedmed.outputs import fsync_folder, json_safe, write_bytes_durable


@dataclass(frozen=True)
class Head:
    """The last entry of a log: what another party can witness and later check."""

    key: str
    seq: int
    hash: str


class AuditLog:
    """Append entries signed by ``key`` to ``path``; see the module docstring for the format.

    Opening an existing log verifies it first (:func:`fedmed.audit.verify.verify_log`):
    a party never extends a chain that has been tampered with.
    """

    def __init__(
        self,
        path: Path,
        key: Ed25519PrivateKey,
        last_seq: int,
        last_hash: str,
        entries: list[dict[str, Any]] | None = None,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._seq = last_seq
        self._hash = last_hash
        self._entries = list(entries or [])
        self.key_fingerprint = fingerprint(key.public_key())

    @classmethod
    def open(cls, path: Path, key_folder: Path, party: str) -> AuditLog:
        """Open (or start) the log at ``path`` signed with the key kept in ``key_folder``."""
        path = Path(path)
        key = load_or_create_key(key_folder)
        pem = public_pem(key.public_key())
        if path.exists():
            pub = pub_path(path)
            if not pub.is_file() or pub.read_bytes() != pem:
                raise AuditError(f"{path}: the public key beside the log is not this party's key")
            result = verify_log(path)
            if not result.ok:
                raise AuditError(f"{path}: {result.describe()}; refusing to extend it")
            return cls(path, key, result.last_seq, result.last_hash, result.entries)
        if head_path(path).exists():
            raise AuditError(f"{path}: log missing but its signed head remains (deleted?)")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_durable(pub_path(path), pem)
        log = cls(path, key, -1, GENESIS)
        log.append("log-start", {"party": party, "key": log.key_fingerprint})
        return log

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every entry of the log, verified when it was opened plus those appended since
        (a copy: the party reads its own signed record, e.g. the node's ``dp-release``s)."""
        return list(self._entries)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The payloads of this log's entries of ``kind``, in order."""
        return [entry["payload"] for entry in self._entries if entry["kind"] == kind]

    @property
    def head(self) -> Head:
        return Head(self.key_fingerprint, self._seq, self._hash)

    def append(self, kind: str, payload: Mapping[str, Any]) -> Head:
        """Sign and append one entry; durable (fsync) when this returns."""
        if not kind or not isinstance(kind, str):
            raise ValueError("an audit entry needs a kind")
        safe = json_safe(dict(payload))
        seq = self._seq + 1
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        digest = entry_hash(seq, when, kind, safe, self._hash)
        signature = self._key.sign(ENTRY_DOMAIN + digest.encode("ascii")).hex()
        entry = {"seq": seq, "time": when, "kind": kind, "payload": safe, "prev": self._hash,
                 "hash": digest, "sig": signature}
        line = canonical(entry)
        existed = self.path.exists()
        with open(self.path, "a", encoding="ascii") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if not existed:
            fsync_folder(self.path.parent)
        self._seq, self._hash = seq, digest
        self._entries.append(entry)
        head = {"seq": seq, "hash": digest, "sig": self._key.sign(head_message(seq, digest)).hex()}
        write_bytes_durable(head_path(self.path), (canonical(head) + "\n").encode("ascii"))
        return self.head
