"""The byte format of an audit log entry and its signed head, shared by the writer
(:mod:`fedmed.audit.log`) and the verifier (:mod:`fedmed.audit.verify`).

See :mod:`fedmed.audit.log` for the file format these functions define.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

GENESIS = "0" * 64
ENTRY_DOMAIN = b"fedmed-audit-entry\n"
HEAD_DOMAIN = b"fedmed-audit-head\n"
ENTRY_KEYS = ("hash", "kind", "payload", "prev", "seq", "sig", "time")


def canonical(document: Mapping[str, Any]) -> str:
    """The one JSON text of ``document``: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def entry_hash(seq: int, when: str, kind: str, payload: Mapping[str, Any], prev: str) -> str:
    body = {"seq": seq, "time": when, "kind": kind, "payload": payload, "prev": prev}
    return hashlib.sha256(canonical(body).encode("ascii")).hexdigest()


def head_message(seq: int, digest: str) -> bytes:
    return HEAD_DOMAIN + canonical({"seq": seq, "hash": digest}).encode("ascii")


def pub_path(log_path: Path) -> Path:
    return Path(f"{log_path}.pub")


def head_path(log_path: Path) -> Path:
    return Path(f"{log_path}.head")


def holds_head(entries: Sequence[Mapping[str, Any]], seq: int, digest: str) -> bool:
    """Whether a verified log's ``entries`` still hold the head (``seq``, ``digest``) someone
    witnessed: the same entry at that position, possibly followed by later ones. One rule
    for the node (before training), ``fedmed site restore`` and ``fedmed audit verify``."""
    return 0 <= seq < len(entries) and entries[seq]["hash"] == digest
