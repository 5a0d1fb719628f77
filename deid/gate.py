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

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from fedmed.deid.batch import Batch
from fedmed.deid.config import DeidConfig
from fedmed.deid.dicom import PROFILE_VERSION, DicomDeidentifier, parsed_dicom
from fedmed.deid.notetext import Note, NoteText, Spill, SpilledText, discard, note_groups
from fedmed.deid.phi import Document
from fedmed.deid.residual import RESIDUAL_VERSION, Finding, residual_findings
from fedmed.deid.sitekey import SiteKey
from fedmed.deid.stream import NoteShape, TextScan, scan_text_file, scrub_stream, spilled_scan
from fedmed.deid.surrogates import Scrubber

AuditCallback = Callable[[dict[str, Any]], object]
_TEXT_VRS = ("PN", "LO", "SH", "LT", "ST", "UT", "AE", "CS")
SPILL_DIR = Path("deid") / "spill"
"""Where, in the site home, long notes read from record files wait while they are scrubbed."""


@dataclass
class AdmissionResult:
    """What passed the gate, what did not (by pseudonymous id), and the batch report."""

    released: list[Any]
    quarantined: list[dict[str, Any]]
    report: dict[str, Any]


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

    def spill(self) -> Spill:
        """A private folder under the site home for the long notes of one file
        (:mod:`fedmed.deid.notetext`), removed when closed: raw notes stay in the home."""
        return Spill(self.site_home / SPILL_DIR)

    # ------------------------------------------------------------ text
    def batch(self, kind: str, batch_id: str | None = None) -> Batch:
        """A new batch record of this site (``batch_id``: see :class:`Batch`)."""
        if batch_id is None:
            return Batch(kind, self.key, self.site_home)
        return Batch(kind, self.key, self.site_home, batch_id)

    def admit_texts(self, items: Iterable[Document | str],
                    batch_id: str | None = None) -> AdmissionResult:
        """De-identify notes; return the released ones (``Document`` with scrubbed text)."""
        docs = [it if isinstance(it, Document) else Document(f"item-{i}", it)
                for i, it in enumerate(items)]
        batch = self.batch("text", batch_id)
        released = self.admit_documents(docs, batch)
        return self._finish(batch, released, {"detector": self.detector.versions})

    def admit_documents(self, docs: Sequence[Document], batch: Batch) -> list[Document]:
        """:meth:`admit_texts` into a batch the caller finishes (:meth:`finish`): one
        batch for many files (``deid scrub``)."""
        ok = []
        for doc in docs:
            batch.receive(doc.text.encode("utf-8"))
            problem = self.boundary_problem(NoteShape.of(doc.text))
            if problem:
                batch.quarantine(doc.doc_id, problem, doc.text.encode("utf-8"), ".txt")
            else:
                ok.append(doc)
        released = []
        spans_per_doc = self.detector.detect_batch([d.text for d in ok]) if ok else []
        for doc, spans in zip(ok, spans_per_doc, strict=True):
            patient = self.patient(doc)
            scrubbed = self.scrubber.scrub(doc.text, spans, patient)
            findings = residual_findings(scrubbed.text, scrubbed.replaced)
            if self._held_back(batch, doc.doc_id, findings, doc.text.encode("utf-8")):
                continue
            batch.counts.update(s.type for s in spans)
            out = Document(self.pseudonym("doc", doc.doc_id), scrubbed.text,
                           list(scrubbed.replaced),
                           {"patient": self.pseudonym("patient", patient),
                            "kind": doc.meta.get("kind")})
            batch.release(scrubbed.text.encode("utf-8"))
            released.append(out)
        return released

    def scrub_text_file(self, src: Path, dst: Path, batch: Batch) -> bool:
        """One plain-text note file through the gate into ``dst``, streamed: memory does not
        grow with the note (:mod:`fedmed.deid.stream`), and ``dst`` holds the bytes
        :meth:`admit_documents` would release for ``Document(src.stem, text)``. False, with
        nothing left at ``dst``, when the note was quarantined. DataError (nothing counted)
        when the file is not a readable text file (the checks of ``io.read_text``)."""
        scan = scan_text_file(src, self.config.max_bytes)
        return self._scrub_scanned(scan, Document(src.stem, ""), dst, batch)

    def admit_stream(self, notes: Iterable[Note], batch: Batch, spill: Spill
                     ) -> Iterator[tuple[Note, NoteText | None]]:
        """Notes read record by record (:mod:`fedmed.deid.records`) through the gate, in
        order: each with its scrubbed text (held, or a :class:`SpilledText` file of
        ``spill`` for a spilled note) or None when it was quarantined.

        Held notes go through :meth:`admit_documents` in groups of up to the detector's
        worker batch (:data:`POOL_START_NOTES` notes or :data:`POOL_START_CHARS`
        characters), so a file of short notes is detected as fast as when it was read
        whole; a spilled note is scrubbed from its file window by window
        (:func:`fedmed.deid.stream.scrub_stream`), its raw copy deleted after. Each note's
        output is the one :meth:`admit_documents` gives it in memory. A note with a
        ``problem`` (a field of its record too long to read) is quarantined with it."""
        from fedmed.deid.presidio_engine import POOL_START_CHARS, POOL_START_NOTES

        for group in note_groups(notes, POOL_START_NOTES, POOL_START_CHARS):
            note = group[0]
            if note.problem is not None:
                batch.receive(b"")  # counted; its content was not read
                batch.quarantine(note.doc.doc_id, {"reason": note.problem})
                discard(note.text)
                yield note, None
            elif isinstance(note.text, SpilledText):
                out = spill.new_path()
                ok = self._scrub_scanned(spilled_scan(note.text), note.doc, out, batch)
                discard(note.text)
                yield note, SpilledText(out) if ok else None
            else:
                released = {d.doc_id: d.text for d in
                            self.admit_documents([n.doc for n in group], batch)}
                for held in group:
                    yield held, released.get(self.pseudonym("doc", held.doc.doc_id))

    def _scrub_scanned(self, scan: TextScan, doc: Document, dst: Path, batch: Batch) -> bool:
        """A checked note file (``scan``) scrubbed as ``doc`` into ``dst``, streamed (see
        :meth:`scrub_text_file`); False, with nothing at ``dst``, when it was quarantined
        (a copy of the file kept with the reason)."""
        batch.receive_sha256(scan.sha256)
        problem = self.boundary_problem(scan.shape)
        if problem:
            batch.quarantine(doc.doc_id, problem, scan.path, ".txt")
            return False
        with open(dst, "wb") as out:
            note = scrub_stream(self.detector, self.scrubber, scan, self.patient(doc), out)
        if self._held_back(batch, doc.doc_id, note.findings, scan.path):
            dst.unlink()
            return False
        batch.counts.update(note.counts)
        batch.release_sha256(note.released_sha256)
        return True

    @staticmethod
    def patient(doc: Document) -> str:
        """Whose note it is, for the surrogates: ``meta["patient_id"]``, else the note alone."""
        return str(doc.meta.get("patient_id") or f"document:{doc.doc_id}")

    @staticmethod
    def _held_back(batch: Batch, item: str, findings: Sequence[Finding],
                   content: bytes | Path) -> bool:
        """Count the residual check's outcome; quarantine the note when it found anything."""
        if not findings:
            batch.residual["passed"] += 1
            return False
        batch.residual["failed"] += 1
        batch.residual.update(f"found_{f.kind}" for f in findings)
        reason = {"reason": "residual identifier-shaped strings after scrubbing",
                  "findings": [{"kind": f.kind, "start": f.start, "end": f.end}
                               for f in findings]}
        batch.quarantine(item, reason, content, ".txt")
        return True

    def boundary_problem(self, shape: NoteShape) -> dict[str, Any] | None:
        """Why a note of this shape is quarantined before detection, or None."""
        if not shape.has_text:
            return {"reason": "empty note"}
        if shape.chars > self.config.max_note_chars:
            return {"reason": f"note of {shape.chars} characters is over the "
                              f"{self.config.max_note_chars}-character limit "
                              "(deid.max_note_chars)"}
        if shape.utf8_bytes > self.config.max_bytes:
            return {"reason": f"note of {shape.utf8_bytes} bytes is over the "
                              f"{self.config.max_bytes}-byte limit"}
        if shape.has_nul or shape.control > max(10, shape.chars // 100):
            return {"reason": "binary content (NUL or control characters)"}
        return None

    # ------------------------------------------------------------ DICOM
    def admit_dicom(self, items: Iterable[str | Path | Dataset],
                    batch_id: str | None = None) -> AdmissionResult:
        """De-identify DICOM files/datasets; released: list of (pseudonymous id, Dataset)."""
        batch = self.batch("dicom", batch_id)
        released = self.admit_dicom_files(items, batch)
        return self._finish(batch, released, {"dicom_profile": PROFILE_VERSION})

    def admit_dicom_files(self, items: Iterable[str | Path | Dataset],
                          batch: Batch) -> list[tuple[str, Dataset]]:
        """:meth:`admit_dicom` into a batch the caller finishes (:meth:`finish`)."""
        released = []
        for i, item in enumerate(items):
            name = str(item) if not isinstance(item, Dataset) else f"dataset-{i}"
            ds = self._read_dicom(item, name, batch)
            if ds is not None and self.admit_dicom_dataset(ds, name, batch):
                released.append((self.pseudonym("dicom", name), ds))
        return released

    def admit_dicom_dataset(self, ds: Dataset, name: str, batch: Batch) -> bool:
        """De-identify one parsed DICOM ``ds`` in place (PS3.15 basic profile, the patient's
        date offset, UID remap) into ``batch``; False when it was quarantined instead
        (burnt-in annotation, identifiers left in the header), with the reason.

        For readers that parse files themselves (``fedmed.data.admission``); the caller
        counts the raw input with :meth:`Batch.receive` and finishes with :meth:`finish`."""
        original_ids = [str(ds.get(k, "")) for k in ("PatientName", "PatientID")]
        result = self.dicom.deidentify(ds)
        if result.burned_in:
            batch.quarantine(name, {"reason": "BurnedInAnnotation=YES: pixel PHI "
                                    "cannot be removed by header de-id"})
            return False
        leftovers = dicom_residual(ds, [v for v in original_ids if len(v) >= 3])
        if leftovers:
            batch.residual["failed"] += 1
            batch.quarantine(name, {"reason": "identifiers left in DICOM header",
                                    "attributes": leftovers})
            return False
        batch.residual["passed"] += 1
        batch.counts.update(result.counts)
        batch.release(str(ds.get("SOPInstanceUID", "")).encode())
        return True

    def _read_dicom(self, item: str | Path | Dataset, name: str, batch: Batch) -> Dataset | None:
        if isinstance(item, Dataset):
            batch.receive(str(item).encode("utf-8", "replace"))
            return item
        path = Path(item)
        problem = None
        if not path.is_file():
            problem = "no such file"
        elif path.stat().st_size > self.config.max_bytes:
            problem = f"file over the {self.config.max_bytes}-byte limit"
        batch.receive(path.read_bytes() if problem is None else name.encode())
        if problem is None:
            try:
                return parsed_dicom(path)
            except (InvalidDicomError, OSError, ValueError, EOFError, NotImplementedError,
                    KeyError, TypeError) as e:
                problem = f"not a readable DICOM file ({type(e).__name__})"
        batch.quarantine(name, {"reason": problem})
        return None

    # ------------------------------------------------------------ shared
    def _finish(self, batch: Batch, released: list[Any],
                versions: dict[str, Any]) -> AdmissionResult:
        return AdmissionResult(released, batch.quarantined, self.finish(batch, versions))

    def finish(self, batch: Batch, versions: dict[str, Any]) -> dict[str, Any]:
        """The batch report (:meth:`Batch.report`), handed to ``audit`` when the gate has one."""
        report = batch.report(self.config.mode, versions, RESIDUAL_VERSION)
        if self.audit is not None:
            self.audit(report)
        return report


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
