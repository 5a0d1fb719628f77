"""A hospital's own coded notes for the ICD packs: ``<data_dir>/<site>/notes.jsonl``.

Why this format: an EHR export of notes with their billed codes is a table with free text
in it; JSON Lines keeps the text exact (newlines, quotes, any script) where CSV quoting
often breaks, and every line stands alone, so an error names its line. One object per line:

- ``id`` (string, unique in the file) — the note's id in the hospital's system;
- ``text`` (string) — the **raw** note: it passes the site's de-identification gate
  (:mod:`fedmed.data.text_admission`) before any model or cache sees it;
- ``codes`` (list of strings) — the note's codes, each one of the federation's code list
  (the model's output layer is the same at every site, so an unknown code is an error
  naming the line, never dropped);
- ``split`` — ``"train"`` or ``"test"``;
- ``patient_id`` (optional string) — one surrogate per patient across their notes;
- ``identifiers`` (optional list of strings) — the patient's registry name parts and MRN,
  for the known-identifier check after the gate.

:func:`write_site_notes` writes the same format; ``python -m fedmed.data.icd_export``
uses it to write the built-in synthetic sites at any size.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fedmed.data.private_files import write_private
from fedmed.deid.notetext import Note, Spill, SpilledText
from fedmed.deid.phi import Document
from fedmed.deid.records import JsonLineError, jsonl_records
from fedmed.deid.stream import scan_text_file, text_chunks
from fedmed.errors import DataError

NOTES_FILE = "notes.jsonl"
SPLITS = ("train", "test")


def read_site_notes(path: Path, codes: Sequence[str]) -> list[Document]:
    """Every note of one site's ``notes.jsonl`` as raw :class:`Document` s, checked line by line."""
    return [note.doc for note in site_notes(path, codes)]


def site_notes(path: Path, codes: Sequence[str], hold: int | None = None,
               spill: Spill | None = None) -> Iterator[Note]:
    """The notes of one site's ``notes.jsonl`` one at a time, checked line by line (the errors
    name the file and line); at the end, that both splits are there.

    What the node's admission reads (:func:`fedmed.data.text_admission.admitted_notes`): a
    note longer than ``hold`` characters is not held but spilled, as it is decoded, into
    ``spill`` (:mod:`fedmed.deid.records`), so a site's file is read in memory that does not
    grow with its notes' length or number. ``hold`` None holds every note."""
    if not path.is_file():
        raise DataError(f"{path}: not found (each site folder needs a {NOTES_FILE})")
    scan = scan_text_file(path, max_bytes=sys.maxsize)  # a site's file: no size limit
    known = set(codes)
    seen: set[str] = set()
    splits: set[str] = set()
    try:
        for record in jsonl_records(text_chunks(scan), str(path), "text", hold, spill):
            where = f"{path}:{record.line}"
            if record.problem is not None:
                raise DataError(f"{where}: {record.problem}")
            note = _note(record.fields, where, known)
            if note.doc.doc_id in seen:
                raise DataError(f"{where}: note id {note.doc.doc_id!r} occurs twice")
            seen.add(note.doc.doc_id)
            splits.add(note.doc.meta["split"])
            yield note
    except JsonLineError as e:
        reason = f" ({e.reason})" if e.reason else ""
        raise DataError(f"{path}:{e.line}: not a JSON object{reason}") from None
    for split in SPLITS:
        if split not in splits:
            raise DataError(f"{path}: no {split} notes (a site needs both splits)")


def _note(record: dict[str, Any], where: str, known: set[str]) -> Note:
    note_id, text, codes = record.get("id"), record.get("text"), record.get("codes")
    if not isinstance(note_id, str) or not note_id:
        raise DataError(f"{where}: 'id' must be a non-empty string")
    if not (isinstance(text, str) and text.strip() or
            isinstance(text, SpilledText) and text.shape is not None and text.shape.has_text):
        raise DataError(f"{where}: note {note_id!r} has no 'text'")
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise DataError(f"{where}: note {note_id!r}: 'codes' must be a list of strings")
    unknown = sorted(set(codes) - known)
    if unknown:
        raise DataError(f"{where}: note {note_id!r}, field 'codes': codes outside the "
                        f"federation's list: {', '.join(unknown)} "
                        f"(known: {', '.join(sorted(known))})")  # fmt: skip
    split = record.get("split")
    if split not in SPLITS:
        raise DataError(f"{where}: note {note_id!r}: 'split' must be 'train' or 'test', "
                        f"got {split!r}")  # fmt: skip
    meta: dict[str, Any] = {"labels": sorted(set(codes)), "split": split}
    if record.get("patient_id") is not None:
        meta["patient_id"] = str(record["patient_id"])
    identifiers = record.get("identifiers", [])
    if not isinstance(identifiers, list) or not all(isinstance(v, str) for v in identifiers):
        raise DataError(f"{where}: note {note_id!r}: 'identifiers' must be a list of strings")
    meta["identifiers"] = identifiers
    return Note(Document(note_id, text if isinstance(text, str) else "", meta=meta), text)


def write_site_notes(path: Path, notes: Sequence[Document]) -> None:
    """Write ``notes`` (raw, with ``meta`` as the synthetic generator fills it) as ``path``.

    The file holds raw notes, so it is written like the gate's files: mode 0600, atomically.
    """
    lines = [
        json.dumps({
            "id": note.doc_id, "text": note.text, "codes": list(note.meta["labels"]),
            "split": note.meta["split"], "patient_id": note.meta.get("patient_id"),
            "identifiers": list(note.meta.get("identifiers", [])),
        }, ensure_ascii=False)
        for note in notes
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, "".join(line + "\n" for line in lines))
