"""PHI taxonomy and the span/document types every deid module exchanges.

Why one module: the corpus generator, the taggers, Presidio, the surrogates and the
evaluation must agree on the *same* label set, otherwise a number in docs/deid.md silently
means something else. The labels are the i2b2-2014 subtypes (the de-facto benchmark), each
with its i2b2 category and the HIPAA Safe Harbor item it falls under (§164.514(b)(2)(A-R)),
or ``None`` where Safe Harbor does not require removal (providers, professions, states,
countries, hospitals: i2b2 extensions kept for re-identification safety).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

CATEGORIES: dict[str, tuple[str, ...]] = {
    "NAME": ("PATIENT", "DOCTOR", "USERNAME"),
    "PROFESSION": ("PROFESSION",),
    "LOCATION": (
        "STREET", "CITY", "STATE", "COUNTRY", "ZIP", "HOSPITAL", "DEPARTMENT", "ROOM",
        "ORGANIZATION", "LOCATION-OTHER",
    ),
    "AGE": ("AGE",),
    "DATE": ("DATE",),
    "CONTACT": ("PHONE", "FAX", "EMAIL", "URL", "IPADDR"),
    "ID": (
        "SSN", "MEDICALRECORD", "HEALTHPLAN", "ACCOUNT", "LICENSE", "VEHICLE", "DEVICE",
        "BIOID", "IDNUM",
    ),
}
"""i2b2-2014 category -> subtypes (the XML tag name and its ``TYPE`` attribute)."""

SUBTYPES: tuple[str, ...] = tuple(t for subs in CATEGORIES.values() for t in subs)
CATEGORY_OF: dict[str, str] = {t: cat for cat, subs in CATEGORIES.items() for t in subs}

HIPAA_ITEM: dict[str, str | None] = {
    "PATIENT": "A", "DOCTOR": None, "USERNAME": "R", "PROFESSION": None,
    "STREET": "B", "CITY": "B", "ZIP": "B", "LOCATION-OTHER": "B",
    "STATE": None, "COUNTRY": None, "HOSPITAL": None, "DEPARTMENT": None, "ROOM": None,
    "ORGANIZATION": None,
    "AGE": "C", "DATE": "C",
    "PHONE": "D", "FAX": "E", "EMAIL": "F", "URL": "N", "IPADDR": "O",
    "SSN": "G", "MEDICALRECORD": "H", "HEALTHPLAN": "I", "ACCOUNT": "J", "LICENSE": "K",
    "VEHICLE": "L", "DEVICE": "M", "BIOID": "P", "IDNUM": "R",
}
"""Subtype -> Safe Harbor item letter; ``None`` = not required by Safe Harbor.

AGE counts only for ages over 89 (item C); :func:`is_hipaa` applies that rule.
"""

DIRECT_IDENTIFIERS: frozenset[str] = frozenset(
    {"PATIENT", "MEDICALRECORD", "SSN", "PHONE", "FAX", "EMAIL"}
)
"""Subtypes privacy officers expect zero misses on (issue 4 acceptance)."""

_NUMBER = re.compile(r"\d+")
_WORD_AGES = {"ninety": 90, "hundred": 100}


def age_value(text: str) -> int | None:
    """The integer age in an AGE span (``"93"``, ``"93-year-old"``), None if unreadable."""
    m = _NUMBER.search(text)
    if m:
        return int(m.group())
    low = text.lower()
    for word, value in _WORD_AGES.items():
        if word in low:
            return value
    return None


def is_hipaa(subtype: str, text: str) -> bool:
    """True if a span of this subtype/text is PHI under Safe Harbor (ages only over 89)."""
    if HIPAA_ITEM.get(subtype) is None:
        return False
    if subtype == "AGE":
        value = age_value(text)
        return value is None or value > 89
    return True


@dataclass(frozen=True, order=True)
class Span:
    """A half-open character range ``[start, end)`` of PHI with its subtype and a score.

    Offsets are Python string indices into the note text; ``text[start:end]`` is the PHI.
    """

    start: int
    end: int
    type: str
    score: float = 1.0

    def overlaps(self, other: Span) -> bool:
        return self.start < other.end and other.start < self.end

    def to_dict(self, text: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "start": self.start, "end": self.end, "type": self.type,
            "score": round(float(self.score), 4),
        }
        if text is not None:
            out["text"] = text[self.start:self.end]
        return out


@dataclass
class Document:
    """One note: its id, text, PHI spans (gold or detected) and free metadata.

    ``meta`` keys used across modules: ``patient_id`` (surrogate consistency), ``kind``
    (note kind), ``template`` and ``split`` (corpus provenance).
    """

    doc_id: str
    text: str
    spans: list[Span] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def check_offsets(self) -> list[str]:
        """Problems with the spans (out of range, empty, unknown type); [] when all fine."""
        problems = []
        for s in self.spans:
            if not 0 <= s.start < s.end <= len(self.text):
                problems.append(f"span {s.start}-{s.end} outside text of {len(self.text)}")
            if s.type not in CATEGORY_OF:
                problems.append(f"span {s.start}-{s.end} has unknown type {s.type!r}")
        return problems


def merge_overlapping(spans: list[Span]) -> list[Span]:
    """Merge overlapping spans; the merged span takes the best-scoring member's type.

    Recall-biased on purpose: the union of character ranges is kept, so if any source
    covers a character it stays covered.
    """
    out: list[Span] = []
    for s in sorted(spans, key=merge_order):
        merge_next(out, s)
    return out


def merge_order(span: Span) -> tuple[int, int]:
    """The order :func:`merge_overlapping` takes spans in: by start, the longest first."""
    return span.start, -span.end


def merge_next(merged: list[Span], span: Span) -> None:
    """One step of :func:`merge_overlapping`: add ``span`` (no earlier in
    :func:`merge_order` than any span already merged) to ``merged``, joining the last one
    when they overlap. Streaming detection (:mod:`fedmed.deid.stream`) merges window by
    window with it, so a long note's spans are those of the whole note at once."""
    if merged and span.start < merged[-1].end:
        last = merged[-1]
        best = last if last.score >= span.score else span
        merged[-1] = Span(last.start, max(last.end, span.end), best.type,
                          max(last.score, span.score))
    else:
        merged.append(span)
