"""Clinical notes through the de-identification gate, with the released notes cached at the site.

Why this module exists: a text task pack must never read raw notes — it receives what the
gate released (docs/architecture.md § Data flow). :func:`admitted_site_notes` is that one
arrow: raw notes with their labels go in, :class:`fedmed.deid.gate.Gate` scrubs them
(surrogates, residual check, quarantine, batch report under ``<site_home>/deid/``), and only
released text and the labels that belong to it come out.

Signed: on a node (``sign`` given, :class:`fedmed.data.admission.AdmissionStage`), the batch
report — the gate's, plus the notes the known-identifier check below held back — is signed into
the site's audit log as a ``deid-batch`` entry before any released note is returned. Its batch
id is the cache key, so a cached admission read again by another process is not signed again;
a cache whose batch is missing from the log (a home restored without it) is signed then.

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
delete ``admitted/`` after upgrading the de-id models. The summary also keeps the SHA-256 of
the notes file, so a cache is trusted without parsing every note.

Long notes (issue 14): :func:`admitted_notes` reads its raw notes one at a time from a reader
(a site's ``notes.jsonl``: :func:`fedmed.data.icd_notes.site_notes`), twice — to check them and
key the cache, then through the gate. A note longer than ``deid.window_chars`` is never held:
the reader spills it into a private folder of the site home as it decodes it, the gate scrubs
it from there window by window (:meth:`fedmed.deid.gate.Gate.admit_stream`), and its released
text is streamed into the cache file. ``Admission.notes`` reads the released notes from the
cache when the pack asks for them — what the pack then holds of a long note is the pack's.

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
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from fedmed.data.admission import Signer
from fedmed.data.private_files import staged_private, write_private
from fedmed.deid.config import DeidConfig
from fedmed.deid.gate import Gate
from fedmed.deid.notetext import Note, NoteText, Spill, discard, text_pieces
from fedmed.deid.phi import Document
from fedmed.deid.records import json_pieces
from fedmed.errors import DataError

CACHE_VERSION = "fedmed-admission-2"  # 2: the summary keeps the signed batch report
ADMITTED_DIR = "admitted"
KNOWN_IDENTIFIER_REASON = "a registered patient identifier is left after de-identification"


@dataclass(frozen=True)
class AdmittedNote:
    """A released note: pseudonymous id, de-identified text, its labels and split."""

    note_id: str
    text: str
    labels: tuple[str, ...]
    split: str


NoteSource = Callable[[int, Spill], Iterable[Note]]
"""How an admission reads its raw notes: given the characters a note may hold in memory and a
spill folder for longer ones (:mod:`fedmed.deid.notetext`), the notes in order. Called twice:
once to check them and key the cache, once through the gate."""


@dataclass(frozen=True)
class Admission:
    """What one batch of raw notes became: the counts, and the released notes in the cache.

    ``notes`` reads the released notes from ``cache_file`` when first asked for: admitting
    holds no note whole (see :func:`admitted_notes`); a pack that trains on them does."""

    received: int
    quarantined: int
    cache_file: Path
    from_cache: bool
    summary: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def notes(self) -> list[AdmittedNote]:
        """The released notes, in input order."""
        return list(_cached_notes(self.cache_file))

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
    sign: Signer | None = None,
) -> Admission:
    """Released notes (with labels) of ``raw``, from the cache or through the site's gate.

    Every raw note needs a unique ``doc_id`` and ``meta["labels"]`` (a list of label names);
    ``meta["split"]`` (default ``"train"``), ``meta["patient_id"]`` (surrogate consistency
    across one patient's notes) and ``meta["identifiers"]`` (the registry's name parts and
    MRN of the patient, for the known-identifier check) are used when present. ``detector``
    replaces the gate's default detector (tests); it is part of the cache key through its
    ``versions``. ``sign``: the site log's signer of the batch report (see the module
    docstring); None outside a node.
    """
    _check_raw(raw)
    return admitted_notes(task, site, site_home, lambda hold, spill: (Note(d, d.text)
                                                                      for d in raw),
                          config, detector, sign)


def admitted_notes(
    task: str,
    site: str,
    site_home: Path,
    read: NoteSource,
    config: DeidConfig | None = None,
    detector: Any | None = None,
    sign: Signer | None = None,
) -> Admission:
    """:func:`admitted_site_notes` of notes read one at a time (a site's notes file: the
    reader checks each note as :func:`admitted_site_notes` requires), in memory that does not
    grow with a note's length or their number: a note longer than ``deid.window_chars`` is
    spilled by the reader into a private folder of the site home and scrubbed from there
    window by window (:meth:`fedmed.deid.gate.Gate.admit_stream`); released notes are written
    to the cache as they come, a long one streamed from its scrubbed copy; the cache key and
    the known-identifier check read a long note a piece at a time. The same notes give the
    same key, batch, report and cache file as :func:`admitted_site_notes` (which is this).
    """
    home = Path(site_home)
    gate = Gate(home, config, detector)
    folder = home / ADMITTED_DIR / task
    hold = gate.config.window_chars
    with gate.spill() as spill:
        key, received = _cache_key(gate, task, site, read(hold, spill), detector)
        notes_file, summary_file = folder / f"{key}.jsonl", folder / f"{key}.summary.json"
        summary = _read_cache(notes_file, summary_file)
        if summary is not None:
            if sign is not None:
                sign(summary["report"])
            return Admission(summary["received"], summary["quarantined"], notes_file, True,
                             summary)
        batch = gate.batch("text", f"text-{key}")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        held: list[dict[str, str]] = []
        released = 0
        with staged_private(notes_file) as (out, staging):
            for note, text in gate.admit_stream(read(hold, spill), batch, spill):
                if text is None:
                    continue
                source = note.doc
                if _known_identifier_left(text, source.meta.get("identifiers", ())):
                    held.append({"item": gate.pseudonym("item", source.doc_id),
                                 "reason": KNOWN_IDENTIFIER_REASON})
                else:
                    line = {"id": gate.pseudonym("doc", source.doc_id), "text": "",
                            "labels": list(source.meta["labels"]),
                            "split": str(source.meta.get("split", "train"))}
                    out.writelines(json_pieces(line, "text", text))
                    out.write("\n")
                    released += 1
                discard(text)
            report = gate.finish(batch, {"detector": gate.detector.versions})
            excluded = [{"item": q["item"], "reason": q["reason"]}
                        for q in batch.quarantined] + held
            if released + len(excluded) != received:
                raise DataError(f"{home}: the gate received {received} notes but accounted "
                                f"for {released + len(excluded)}")
            out.flush()
            summary = {
                "version": CACHE_VERSION, "task": task, "site": site, "received": received,
                "released": released, "quarantined": len(excluded),
                "gate_quarantined": len(batch.quarantined), "known_identifier_held": len(held),
                "quarantine": excluded, "gate_batch": report["batch"],
                "released_sha256": report["released_sha256"],
                "notes_sha256": _file_sha256(staging),
                "report": {**report, "task": task, "known_identifier_held": held},
            }
            _record_held(home, report["batch"], held)
            if sign is not None:
                sign(summary["report"])
    write_private(summary_file, json.dumps(summary, indent=2) + "\n")
    return Admission(received, len(excluded), notes_file, False, summary)


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


def _known_identifier_left(text: NoteText, identifiers: Sequence[str]) -> bool:
    """Whether any registered identifier stands in ``text`` as a whole word (any case).

    A long note's scrubbed copy is read a piece at a time, with the last characters of the
    one before (one more than the longest identifier): a match counts where the text on both
    sides of it was seen, so the answer is that of the whole text."""
    values = [value.strip() for value in identifiers if len(value.strip()) >= 2]
    if not values:
        return False
    patterns = [re.compile(rf"(?<!\w){re.escape(value)}(?!\w)", re.IGNORECASE)
                for value in values]
    keep = max(map(len, values)) + 1
    pieces = text_pieces(text)
    tail, piece = "", next(pieces, "")
    while True:
        following = next(pieces, None)
        window = tail + piece
        if any((m.start() > 0 or not tail) and (m.end() < len(window) or following is None)
               for pattern in patterns for m in pattern.finditer(window)):
            return True
        if following is None:
            return False
        tail, piece = window[-keep:], following


def _record_held(home: Path, batch: str, held: list[dict[str, str]]) -> None:
    """A reason file per held-back note beside the gate's, for the privacy officer (no PHI)."""
    if not held:
        return
    folder = home / "quarantine"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for index, record in enumerate(held):
        write_private(folder / f"{batch}-known-{index:04d}.reason.json",
                       json.dumps({**record, "batch": batch}, indent=2) + "\n")


def _cache_key(gate: Gate, task: str, site: str, notes: Iterable[Note],
               detector: Any | None) -> tuple[str, int]:
    """The cache key of the notes (see the module docstring) and how many there are; a long
    note's record is hashed as ``json.dumps`` would write it, its text read in pieces."""
    batch = hashlib.sha256()
    count = 0
    for note in notes:
        doc = note.doc
        record = [doc.doc_id, "", doc.meta.get("patient_id"), list(doc.meta["labels"]),
                  doc.meta.get("split", "train"), list(doc.meta.get("identifiers", ()))]
        for piece in json_pieces(record, 1, note.text):
            batch.update(piece.encode("utf-8"))
        batch.update(b"\n")
        discard(note.text)
        count += 1
    detector_versions = "" if detector is None else json.dumps(
        getattr(detector, "versions", type(detector).__name__), sort_keys=True, default=str)
    digest = gate.key.digest("admission-cache", CACHE_VERSION, task, site, repr(gate.config),
                             detector_versions, batch.hexdigest())
    return digest.hex()[:32], count


def _read_cache(notes_file: Path, summary_file: Path) -> dict[str, Any] | None:
    """The cached admission's summary, or None when absent or unreadable (then the gate runs
    again): its notes file must be the one it wrote (``notes_sha256``; a summary from before
    that was kept is checked by reading every note)."""
    if not (notes_file.is_file() and summary_file.is_file()):
        return None
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if not isinstance(summary, dict) or summary.get("version") != CACHE_VERSION \
                or not isinstance(summary.get("report"), dict):
            return None
        expected = summary.get("notes_sha256")
        if expected is not None:
            return summary if _file_sha256(notes_file) == expected else None
        count = sum(1 for _ in _cached_notes(notes_file))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return summary if count == summary.get("released") else None


def _cached_notes(notes_file: Path) -> Iterator[AdmittedNote]:
    """The released notes of a cache file, one line at a time."""
    with open(notes_file, encoding="utf-8") as lines:
        for line in lines:
            r = json.loads(line)
            yield AdmittedNote(r["id"], r["text"], tuple(r["labels"]), r["split"])


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


