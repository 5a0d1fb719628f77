"""The admission gate: the only way clinical text and DICOM reach a task pack.

Contract with the node (``fedmed.clients``): call :func:`admit_texts` /
:func:`admit_dicom` (or a :class:`Gate`) on raw site data and hand *only*
``AdmissionResult.released`` to a task pack. For every batch the gate

1. checks each item at the boundary (empty, longer than ``deid.max_note_chars`` or
   ``deid.max_bytes``, binary, unreadable DICOM, burnt-in annotation) -- failures are
   quarantined with the reason, never passed through nor dropped silently;
2. detects PHI (:class:`fedmed.deid.presidio_engine.Detector`) and writes surrogates or
   redaction tags (:class:`fedmed.deid.surrogates.Scrubber`; DICOM:
   :class:`fedmed.deid.dicom.DicomDeidentifier`);
3. runs the residual check (:mod:`fedmed.deid.residual`) -- a note with an SSN-, MRN-,
   phone- or e-mail-shaped string left outside its surrogates goes to
   ``<site_home>/quarantine/`` with a ``.reason.json`` beside it, not to training;
4. builds a batch report (counts per PHI category, detector/rule/profile versions,
   residual-check result, a hash of what was released, the site key fingerprint -- never
   PHI) and passes it to ``audit`` (the privacy engineer's signer for the site audit
   trail) and writes it under ``<site_home>/deid/reports/``.

Released items carry a pseudonymous id and patient pseudonym (HMAC of the site secret),
never the original document id or patient id.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from fedmed.deid.config import DeidConfig
from fedmed.deid.dicom import PROFILE_VERSION, DicomDeidentifier, parsed_dicom
from fedmed.deid.phi import CATEGORY_OF, Document
from fedmed.deid.residual import RESIDUAL_VERSION, residual_findings
from fedmed.deid.sitekey import SiteKey
from fedmed.deid.surrogates import Scrubber

AuditCallback = Callable[[dict[str, Any]], None]
REPORT_KIND = "fedmed.deid.batch-report"
_TEXT_VRS = ("PN", "LO", "SH", "LT", "ST", "UT", "AE", "CS")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]")
"""Control characters other than tab, line feed, form feed and carriage return."""


@dataclass
class AdmissionResult:
    """What passed the gate, what did not (by pseudonymous id), and the batch report."""

    released: list[Any]
    quarantined: list[dict[str, Any]]
    report: dict[str, Any]


@dataclass
class _Batch:
    kind: str
    batch_id: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime(
        "%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8])
    counts: Counter[str] = field(default_factory=Counter)
    residual: Counter[str] = field(default_factory=Counter)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    released_hash: Any = field(default_factory=hashlib.sha256)
    received: int = 0
    released: int = 0


class Gate:
    """De-identification gate of one site (its home folder holds the secret and quarantine)."""

    def __init__(self, site_home: str | Path, config: DeidConfig | None = None,
                 detector: Any | None = None, audit: AuditCallback | None = None) -> None:
        self.site_home = Path(site_home)
        self.config = config or DeidConfig()
        self.key = SiteKey.load_or_create(self.site_home)
        self._detector = detector
        self.audit = audit
        self.scrubber = Scrubber(self.key, self.config.mode, self.config.date_shift_max_days)
        self.dicom = DicomDeidentifier(self.key, self.config.date_shift_max_days)

    @property
    def detector(self) -> Any:
        if self._detector is None:
            from fedmed.deid.presidio_engine import Detector

            self._detector = Detector(self.config)
        return self._detector

    def pseudonym(self, kind: str, value: str) -> str:
        return self.key.digest(kind, value).hex()[:16]

    # ------------------------------------------------------------ text
    def admit_texts(self, items: Iterable[Document | str]) -> AdmissionResult:
        """De-identify notes; return the released ones (``Document`` with scrubbed text)."""
        docs = [it if isinstance(it, Document) else Document(f"item-{i}", it)
                for i, it in enumerate(items)]
        batch = _Batch("text", received=len(docs))
        ok = []
        for doc in docs:
            problem = self._boundary_problem(doc.text)
            if problem:
                self._quarantine(batch, doc.doc_id, problem, doc.text.encode("utf-8"), ".txt")
            else:
                ok.append(doc)
        released = []
        spans_per_doc = self.detector.detect_batch([d.text for d in ok]) if ok else []
        for doc, spans in zip(ok, spans_per_doc, strict=True):
            patient = str(doc.meta.get("patient_id") or f"document:{doc.doc_id}")
            scrubbed = self.scrubber.scrub(doc.text, spans, patient)
            findings = residual_findings(scrubbed.text, scrubbed.replaced)
            if findings:
                batch.residual["failed"] += 1
                batch.residual.update(f"found_{f.kind}" for f in findings)
                reason = {"reason": "residual identifier-shaped strings after scrubbing",
                          "findings": [{"kind": f.kind, "start": f.start, "end": f.end}
                                       for f in findings]}
                self._quarantine(batch, doc.doc_id, reason, doc.text.encode("utf-8"), ".txt")
                continue
            batch.residual["passed"] += 1
            batch.counts.update(s.type for s in spans)
            out = Document(self.pseudonym("doc", doc.doc_id), scrubbed.text,
                           list(scrubbed.replaced),
                           {"patient": self.pseudonym("patient", patient),
                            "kind": doc.meta.get("kind")})
            batch.released_hash.update(scrubbed.text.encode("utf-8") + b"\x00")
            released.append(out)
        batch.released = len(released)
        return self._finish(batch, released, {"detector": self.detector.versions})

    def _boundary_problem(self, text: str) -> dict[str, Any] | None:
        if not text.strip():
            return {"reason": "empty note"}
        if len(text) > self.config.max_note_chars:
            return {"reason": f"note of {len(text)} characters is over the "
                              f"{self.config.max_note_chars}-character limit "
                              "(deid.max_note_chars)"}
        size = len(text.encode("utf-8"))
        if size > self.config.max_bytes:
            return {"reason": f"note of {size} bytes is over the "
                              f"{self.config.max_bytes}-byte limit"}
        control = sum(1 for _ in _CONTROL.finditer(text))
        if "\x00" in text or control > max(10, len(text) // 100):
            return {"reason": "binary content (NUL or control characters)"}
        return None

    # ------------------------------------------------------------ DICOM
    def admit_dicom(self, items: Iterable[str | Path | Dataset]) -> AdmissionResult:
        """De-identify DICOM files/datasets; released: list of (pseudonymous id, Dataset)."""
        batch = _Batch("dicom")
        released = []
        for i, item in enumerate(items):
            batch.received += 1
            name = str(item) if not isinstance(item, Dataset) else f"dataset-{i}"
            ds = self._read_dicom(item, name, batch)
            if ds is None:
                continue
            original_ids = [str(ds.get(k, "")) for k in ("PatientName", "PatientID")]
            result = self.dicom.deidentify(ds)
            if result.burned_in:
                self._quarantine(batch, name, {"reason": "BurnedInAnnotation=YES: pixel PHI "
                                               "cannot be removed by header de-id"}, None, "")
                continue
            leftovers = dicom_residual(ds, [v for v in original_ids if len(v) >= 3])
            if leftovers:
                batch.residual["failed"] += 1
                self._quarantine(batch, name, {"reason": "identifiers left in DICOM header",
                                               "attributes": leftovers}, None, "")
                continue
            batch.residual["passed"] += 1
            batch.counts.update(result.counts)
            batch.released_hash.update(str(ds.get("SOPInstanceUID", "")).encode() + b"\x00")
            released.append((self.pseudonym("dicom", name), ds))
        batch.released = len(released)
        return self._finish(batch, released, {"dicom_profile": PROFILE_VERSION})

    def _read_dicom(self, item: str | Path | Dataset, name: str, batch: _Batch) -> Dataset | None:
        if isinstance(item, Dataset):
            return item
        path = Path(item)
        problem = None
        if not path.is_file():
            problem = "no such file"
        elif path.stat().st_size > self.config.max_bytes:
            problem = f"file over the {self.config.max_bytes}-byte limit"
        if problem is None:
            try:
                return parsed_dicom(path)
            except (InvalidDicomError, OSError, ValueError, EOFError, NotImplementedError,
                    KeyError, TypeError) as e:
                problem = f"not a readable DICOM file ({type(e).__name__})"
        self._quarantine(batch, name, {"reason": problem}, None, "")
        return None

    # ------------------------------------------------------------ shared
    def _quarantine(self, batch: _Batch, item: str, reason: dict[str, Any],
                    content: bytes | None, suffix: str) -> None:
        folder = self.site_home / "quarantine"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = f"{batch.batch_id}-{len(batch.quarantined):04d}"
        if content is not None:
            _write_private(folder / f"{stem}{suffix}", content)
        record = {"item": self.pseudonym("item", item), "batch": batch.batch_id, **reason}
        _write_private(folder / f"{stem}.reason.json",
                       (json.dumps({**record, "source": item}, indent=2) + "\n").encode())
        batch.quarantined.append(record)

    def _finish(self, batch: _Batch, released: list[Any],
                versions: dict[str, Any]) -> AdmissionResult:
        by_category = Counter[str]()
        for subtype, n in batch.counts.items():
            by_category[CATEGORY_OF.get(subtype, subtype)] += n
        report = {
            "kind": REPORT_KIND, "version": 1, "batch": batch.batch_id, "input": batch.kind,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "site_key_fingerprint": self.key.fingerprint, "mode": self.config.mode,
            **versions,
            "items": {"received": batch.received, "released": batch.released,
                      "quarantined": len(batch.quarantined)},
            "phi_counts": dict(sorted(batch.counts.items())),
            "phi_counts_by_category": dict(sorted(by_category.items())),
            "residual_check": {"version": RESIDUAL_VERSION, **dict(batch.residual)},
            "quarantine": [{k: v for k, v in q.items() if k in ("item", "reason")}
                           for q in batch.quarantined],
            "released_sha256": batch.released_hash.hexdigest(),
        }
        folder = self.site_home / "deid" / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{batch.batch_id}.json").write_text(json.dumps(report, indent=2) + "\n")
        if self.audit is not None:
            self.audit(report)
        return AdmissionResult(released, batch.quarantined, report)


def dicom_residual(ds: Dataset, originals: Sequence[str]) -> list[str]:
    """Keywords of text attributes that still hold an original id or an identifier shape."""
    hits = []
    for elem in ds.iterall():
        if elem.VR not in _TEXT_VRS or elem.tag.is_private or not elem.value:
            continue
        value = str(elem.value)
        if any(o and o.lower() in value.lower() for o in originals) or \
                residual_findings(value):
            hits.append(elem.keyword or str(elem.tag))
    return hits


def _write_private(path: Path, content: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def admit_texts(texts: Iterable[Document | str], site_home: str | Path,
                config: DeidConfig | None = None, detector: Any | None = None,
                audit: AuditCallback | None = None) -> AdmissionResult:
    """One batch of notes through a :class:`Gate` (see the module docstring)."""
    return Gate(site_home, config, detector, audit).admit_texts(texts)


def admit_dicom(items: Iterable[str | Path | Dataset], site_home: str | Path,
                config: DeidConfig | None = None,
                audit: AuditCallback | None = None) -> AdmissionResult:
    """One batch of DICOM files/datasets through a :class:`Gate`."""
    return Gate(site_home, config, None, audit).admit_dicom(items)
