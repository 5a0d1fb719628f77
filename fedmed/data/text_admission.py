"""Clinical notes through the de-identification gate, with the released notes cached at the site.

Why this module exists: a text task pack must never read raw notes — it receives what the
gate released (docs/architecture.md § Data flow). :func:`admitted_site_notes` is that one
arrow: raw notes with their labels go in, :class:`fedmed.deid.gate.Gate` scrubs them
(surrogates, residual check, quarantine, batch report under ``<site_home>/deid/``), and only
released text and the labels that belong to it come out.

Why a cache: the gate de-identifies about ten notes a second on a shared CPU, and a site loads
its data in every process of every run (the CLI's checks, each simulated node, baselines).
The released notes are kept in ``<site_home>/admitted/<task>/<key>.jsonl`` (mode 0600, folder
0700) with a ``<key>.summary.json`` beside it (counts, quarantine reasons by pseudonymous id,
the gate's batch id — never PHI). The cache holds only de-identified text, no more than the
model sees. ``key`` is an HMAC under the site's de-id secret of the raw batch (ids, texts,
patient ids, labels, splits), the gate settings and this module's format version: new notes,
new settings or a new site secret give a new admission. Keyed rather than a plain SHA-256, so
the file name cannot be used to confirm a guess of a raw note. Not in the key: the version of
the shipped tagger (reading it means loading the detector, which the cache exists to avoid);
delete ``admitted/`` after upgrading the de-id models.

Known-identifier check (defence in depth): a hospital knows whose note it is — the registry's
name and MRN, passed as ``meta["identifiers"]``. A released note in which one of them still
stands as a word is held back like a quarantined one (reason file under
``<site_home>/quarantine/``, no PHI in it). The gate does this for DICOM headers
(``dicom_residual``) but not for text, and its tagger can miss a name: measured on the ICD
notes, one ``LAST, FIRST`` header in 640 kept its last name (the case docs/deid.md reports). The
check belongs in the gate; it lives here until the gate has it.

Label alignment: the gate releases notes in input order *minus* the quarantined ones, under a
pseudonymous id (an HMAC of the raw id). Labels are matched to released notes by recomputing
that id, never by position, so a quarantined note cannot shift its labels onto a neighbour.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmed.deid.config import DeidConfig
from fedmed.deid.gate import Gate
from fedmed.deid.phi import Document
from fedmed.errors import DataError

CACHE_VERSION = "fedmed-admission-1"
ADMITTED_DIR = "admitted"
KNOWN_IDENTIFIER_REASON = "a registered patient identifier is left after de-identification"


@dataclass(frozen=True)
class AdmittedNote:
    """A released note: pseudonymous id, de-identified text, its labels and split."""

    note_id: str
    text: str
    labels: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class Admission:
    """What one batch of raw notes became: the released notes and the counts."""

    notes: list[AdmittedNote]
    received: int
    quarantined: int
    cache_file: Path
    from_cache: bool
    summary: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[AdmittedNote]:
        """The released notes of one split, in input order."""
        return [note for note in self.notes if note.split == name]


def admitted_site_notes(
    task: str,
    site: str,
    site_home: Path,
    raw: Sequence[Document],
    config: DeidConfig | None = None,
    detector: Any | None = None,
) -> Admission:
    """Released notes (with labels) of ``raw``, from the cache or through the site's gate.

    Every raw note needs a unique ``doc_id`` and ``meta["labels"]`` (a list of label names);
    ``meta["split"]`` (default ``"train"``), ``meta["patient_id"]`` (surrogate consistency
    across one patient's notes) and ``meta["identifiers"]`` (the registry's name parts and
    MRN of the patient, for the known-identifier check) are used when present. ``detector``
    replaces the gate's default detector (tests); it is part of the cache key through its
    ``versions``.
    """
    _check_raw(raw)
    home = Path(site_home)
    gate = Gate(home, config, detector)
    folder = home / ADMITTED_DIR / task
    key = _cache_key(gate, task, site, raw, detector)
    notes_file, summary_file = folder / f"{key}.jsonl", folder / f"{key}.summary.json"
    cached = _read_cache(notes_file, summary_file)
    if cached is not None:
        notes, summary = cached
        return Admission(notes, summary["received"], summary["quarantined"], notes_file, True,
                         summary)

    result = gate.admit_texts(raw)
    by_pseudonym = {gate.pseudonym("doc", doc.doc_id): doc for doc in raw}
    notes: list[AdmittedNote] = []
    held: list[dict[str, str]] = []
    for released in result.released:
        source = by_pseudonym[released.doc_id]
        if _known_identifier_left(released.text, source.meta.get("identifiers", ())):
            held.append({"item": gate.pseudonym("item", source.doc_id),
                         "reason": KNOWN_IDENTIFIER_REASON})
            continue
        notes.append(AdmittedNote(released.doc_id, released.text,
                                  tuple(source.meta["labels"]),
                                  str(source.meta.get("split", "train"))))
    excluded = [{"item": q["item"], "reason": q["reason"]} for q in result.quarantined] + held
    if len(notes) + len(excluded) != len(raw):
        raise DataError(f"{home}: the gate received {len(raw)} notes but accounted for "
                        f"{len(notes) + len(excluded)}")
    summary = {
        "version": CACHE_VERSION, "task": task, "site": site, "received": len(raw),
        "released": len(notes), "quarantined": len(excluded),
        "gate_quarantined": len(result.quarantined), "known_identifier_held": len(held),
        "quarantine": excluded, "gate_batch": result.report["batch"],
        "released_sha256": result.report["released_sha256"],
    }
    _record_held(home, result.report["batch"], held)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    lines = [json.dumps({"id": n.note_id, "text": n.text, "labels": list(n.labels),
                         "split": n.split}) for n in notes]
    write_private(notes_file, "".join(line + "\n" for line in lines))
    write_private(summary_file, json.dumps(summary, indent=2) + "\n")
    return Admission(notes, len(raw), len(excluded), notes_file, False, summary)


def _check_raw(raw: Sequence[Document]) -> None:
    """DataError naming the first note that the gate or the label alignment cannot take."""
    seen: set[str] = set()
    for doc in raw:
        if not isinstance(doc, Document):
            raise DataError(f"expected fedmed.deid.phi.Document notes, got {type(doc).__name__}")
        if doc.doc_id in seen:
            raise DataError(f"note id {doc.doc_id!r} occurs twice: labels could not be aligned")
        seen.add(doc.doc_id)
        labels = doc.meta.get("labels")
        if not isinstance(labels, list | tuple) or not all(isinstance(x, str) for x in labels):
            raise DataError(f"note {doc.doc_id!r}: meta['labels'] must be a list of strings")


def _known_identifier_left(text: str, identifiers: Sequence[str]) -> bool:
    """Whether any registered identifier stands in ``text`` as a whole word (any case)."""
    return any(
        re.search(rf"(?<!\w){re.escape(value.strip())}(?!\w)", text, re.IGNORECASE)
        for value in identifiers if len(value.strip()) >= 2
    )


def _record_held(home: Path, batch: str, held: list[dict[str, str]]) -> None:
    """A reason file per held-back note beside the gate's, for the privacy officer (no PHI)."""
    if not held:
        return
    folder = home / "quarantine"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for index, record in enumerate(held):
        write_private(folder / f"{batch}-known-{index:04d}.reason.json",
                       json.dumps({**record, "batch": batch}, indent=2) + "\n")


def _cache_key(gate: Gate, task: str, site: str, raw: Sequence[Document],
               detector: Any | None) -> str:
    batch = hashlib.sha256()
    for doc in raw:
        record = [doc.doc_id, doc.text, doc.meta.get("patient_id"), list(doc.meta["labels"]),
                  doc.meta.get("split", "train"), list(doc.meta.get("identifiers", ()))]
        batch.update(json.dumps(record).encode("utf-8") + b"\n")
    detector_versions = "" if detector is None else json.dumps(
        getattr(detector, "versions", type(detector).__name__), sort_keys=True, default=str)
    digest = gate.key.digest("admission-cache", CACHE_VERSION, task, site, repr(gate.config),
                             detector_versions, batch.hexdigest())
    return digest.hex()[:32]


def _read_cache(notes_file: Path, summary_file: Path
                ) -> tuple[list[AdmittedNote], dict[str, Any]] | None:
    """The cached admission, or None when absent or unreadable (then the gate runs again)."""
    if not (notes_file.is_file() and summary_file.is_file()):
        return None
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        notes = [AdmittedNote(r["id"], r["text"], tuple(r["labels"]), r["split"])
                 for r in map(json.loads, notes_file.read_text(encoding="utf-8").splitlines())]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if summary.get("version") != CACHE_VERSION or len(notes) != summary.get("released"):
        return None
    return notes, summary


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``path`` with mode 0600, atomically (a concurrent reader sees old or new, whole)."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = content.encode("utf-8") if isinstance(content, str) else content
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(staging, path)
