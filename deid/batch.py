"""The record of one admission batch: what came in, what was released, what was held back.

Every modality's admission (notes and DICOM in :mod:`fedmed.deid.gate`, tables and ECG
records in :mod:`fedmed.data.admission`) keeps one :class:`Batch` and ends with
:meth:`Batch.report`, so a privacy officer reads one report format whatever the data: counts
per PHI category, the versions of what decided, each quarantined item by a pseudonymous id
with its reason, and digests of the input and of what was released. Never PHI: item ids are
HMACs under the site secret, and the input digest is keyed too (a plain SHA-256 of a raw
note would let anyone holding the report confirm a guess of it).

Kept apart from the gate because the gate imports Presidio (seconds to load): a table or
waveform admission needs only this record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmed.deid.phi import CATEGORY_OF
from fedmed.deid.sitekey import SiteKey

REPORT_KIND = "fedmed.deid.batch-report"
REPORTS_DIR = Path("deid") / "reports"
QUARANTINE_DIR = "quarantine"


def new_batch_id() -> str:
    """A unique id for a batch that is not tied to its content (time and randomness)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass
class Batch:
    """One batch of one modality at one site (its home holds the quarantine and reports).

    ``batch_id``: the caller's content-derived id when it wants the same input to give the
    same report (the node signs each batch id once); random otherwise.
    """

    kind: str
    key: SiteKey
    site_home: Path
    batch_id: str = field(default_factory=new_batch_id)
    counts: Counter[str] = field(default_factory=Counter)
    residual: Counter[str] = field(default_factory=Counter)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    input_hash: Any = field(default_factory=hashlib.sha256)
    released_hash: Any = field(default_factory=hashlib.sha256)
    received: int = 0
    released: int = 0

    def receive(self, content: bytes) -> None:
        """Count one raw item and add it to the input digest."""
        self.receive_sha256(hashlib.sha256(content).digest())

    def receive_sha256(self, sha256: bytes) -> None:
        """:meth:`receive` of an item known by its SHA-256 (a note streamed from a file)."""
        self.received += 1
        self.input_hash.update(sha256)

    def release(self, content: bytes) -> None:
        """Count one released item and add what was released to the output digest."""
        self.release_sha256(hashlib.sha256(content).digest())

    def release_sha256(self, sha256: bytes) -> None:
        """:meth:`release` of an item known by its SHA-256 (a note streamed to a file)."""
        self.released += 1
        self.released_hash.update(sha256)

    def pseudonym(self, kind: str, value: str) -> str:
        """The site's pseudonymous id of ``value`` (an HMAC under the site secret)."""
        return self.key.digest(kind, value).hex()[:16]

    def quarantine(self, item: str, reason: dict[str, Any],
                   content: bytes | Path | None = None, suffix: str = "") -> dict[str, Any]:
        """Hold ``item`` back: a reason file (and the raw ``content``, or a copy of the file
        it names, when given, for the privacy officer to review) under
        ``<site_home>/quarantine/``, both 0600. The returned record, which goes into the
        report, names the item only by pseudonym."""
        folder = self.site_home / QUARANTINE_DIR
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = f"{self.batch_id}-{len(self.quarantined):04d}"
        if content is not None:
            write_private(folder / f"{stem}{suffix}", content)
        record = {"item": self.pseudonym("item", item), "batch": self.batch_id, **reason}
        write_private(folder / f"{stem}.reason.json",
                      (json.dumps({**record, "source": item}, indent=2) + "\n").encode())
        self.quarantined.append(record)
        return record

    def report(self, mode: str, versions: dict[str, Any],
               residual_version: str | None = None) -> dict[str, Any]:
        """The batch report (no PHI), also written to ``<site_home>/deid/reports/<id>.json``.

        ``residual_version``: the residual check's version when one ran on this batch."""
        residual = {"version": residual_version} if residual_version else {}
        by_category = Counter[str]()
        for subtype, n in self.counts.items():
            by_category[CATEGORY_OF.get(subtype, subtype)] += n
        report = {
            "kind": REPORT_KIND, "version": 2, "batch": self.batch_id, "input": self.kind,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "site_key_fingerprint": self.key.fingerprint, "mode": mode,
            **versions,
            "items": {"received": self.received, "released": self.released,
                      "quarantined": len(self.quarantined)},
            "phi_counts": dict(sorted(self.counts.items())),
            "phi_counts_by_category": dict(sorted(by_category.items())),
            "residual_check": {**residual, **dict(self.residual)},
            "quarantine": [{k: v for k, v in q.items() if k in ("item", "reason")}
                           for q in self.quarantined],
            "input_digest": self.key.digest("deid-input", self.input_hash.hexdigest()).hex(),
            "released_sha256": self.released_hash.hexdigest(),
        }
        folder = self.site_home / REPORTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.batch_id}.json").write_text(json.dumps(report, indent=2) + "\n")
        return report


def write_private(path: Path, content: bytes | Path) -> None:
    """Write ``path`` with mode 0600 (it may hold raw PHI under review); ``content``: the
    bytes, or a file to copy in chunks (a long note is never held whole)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        if isinstance(content, Path):
            with open(content, "rb") as source:
                shutil.copyfileobj(source, f)
        else:
            f.write(content)
