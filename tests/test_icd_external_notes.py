"""The hand-written ICD notes of bench/icd_external.py: valid in the data-dir format, and
written apart from the generator (no sentence of theirs is one of the built-in notes')."""

from __future__ import annotations

from pathlib import Path

from fedmed.data.icd_notes import NOTES_FILE, read_site_notes
from fedmed.data.icd_synth import CODE_IDS, SITES, builtin_site_notes
from fedmed.tasks.icd_sentences import sentence_spans

NOTES = Path(__file__).resolve().parents[1] / "bench" / "data" / "icd-external" / "external"


def sentences(text: str) -> set[str]:
    """The note's sentences of three words or more (the cutter leaves "Mr." on its own)."""
    return {text[a:b].lower() for a, b in sentence_spans(text) if len(text[a:b].split()) >= 3}


def test_the_external_notes_are_coded_notes_in_the_site_format() -> None:
    notes = read_site_notes(NOTES / NOTES_FILE, CODE_IDS)
    assert len(notes) == 36
    assert all(note.meta["labels"] for note in notes)
    coded = {code for note in notes for code in note.meta["labels"]}
    assert coded == set(CODE_IDS)  # every code of the federation is met at least once


def test_no_external_sentence_comes_from_the_generator() -> None:
    external = set().union(*(sentences(n.text) for n in read_site_notes(NOTES / NOTES_FILE,
                                                                        CODE_IDS)))
    generated = set().union(*(sentences(n.text) for site in SITES
                              for n in builtin_site_notes(site)))
    assert not external & generated
