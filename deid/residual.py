"""Residual-risk check: identifier-shaped strings left in scrubbed text.

Why a second, dumber check: detection can miss (a new template, an odd format). After
scrubbing, a handful of high-risk shapes -- SSN, phone, e-mail, an MRN after its keyword,
long digit runs -- are searched for once more, *outside* the places where a surrogate was
written (surrogates are supposed to look like PHI). Any hit sends the note to quarantine
instead of training. Findings carry the kind and offsets only, never the matched text, so
reports and logs cannot leak what they found.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedmed.deid.phi import Span
from fedmed.deid.recognizers import MRN_KEYWORDS, MRN_VALUE

RESIDUAL_VERSION = "fedmed-residual-1"

PATTERNS: dict[str, re.Pattern[str]] = {
    "SSN": re.compile(r"\b(?P<value>\d{3}[- ]\d{2}[- ]\d{4})\b"),
    "PHONE": re.compile(r"(?P<value>(?:\(\d{3}\)\s*|\b\d{3}[-.\s])\d{3}[-.\s]\d{4})\b"),
    "EMAIL": re.compile(r"(?P<value>\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+)"),
    "MEDICALRECORD": re.compile(rf"\b(?:{MRN_KEYWORDS})\s*[:#]?\s*(?P<value>{MRN_VALUE})",
                                re.IGNORECASE),
    "LONG_NUMBER": re.compile(r"\b(?P<value>\d{7,})\b"),
}


@dataclass(frozen=True)
class Finding:
    """An identifier-shaped string left outside every surrogate (no text kept)."""

    kind: str
    start: int
    end: int


def residual_findings(text: str, protected: Sequence[Span] = ()) -> list[Finding]:
    """Identifier-shaped strings in ``text`` not inside a ``protected`` (surrogate) span."""
    found = []
    starts, reach = _reach(protected)
    for kind, pattern in PATTERNS.items():
        for m in pattern.finditer(text):
            a, b = m.span("value")
            i = bisect.bisect_right(starts, a) - 1
            if i >= 0 and b <= reach[i]:
                continue
            found.append(Finding(kind, a, b))
    return sorted(found, key=lambda f: (f.start, f.kind))


def _reach(protected: Sequence[Span]) -> tuple[list[int], list[int]]:
    """Protected starts in order, and for each the farthest end of a span starting there
    or before: a match ``[a, b)`` lies inside some protected span exactly when the reach
    at the last start ``<= a`` is ``>= b``. Found by bisection, so the check takes time
    linear in the note, not matches x spans (a 50 MB note has ~10^5 of each)."""
    ordered = sorted(protected, key=lambda p: p.start)
    reach, farthest = [], -1
    for p in ordered:
        farthest = max(farthest, p.end)
        reach.append(farthest)
    return [p.start for p in ordered], reach


RESIDUAL_CARRY_CHARS = 1_000
"""Characters :class:`ResidualStream` keeps before and after a finding: far more than the
longest shape it looks for (an MRN keyword with its value, a phone number, an e-mail)."""


class ResidualStream:
    """:func:`residual_findings` over a text handed over piece by piece (a streamed note's
    scrubbed output, :mod:`fedmed.deid.stream`), holding only the last characters.

    Each scan covers the new piece and the :data:`RESIDUAL_CARRY_CHARS` characters carried
    before it; a finding is taken from the scan in which it starts at least that far from
    the end of what has been seen (or from the last scan), so every match is made with that
    much text on both sides, as over the whole text: the same findings, in the same order.
    """

    def __init__(self, carry: int = RESIDUAL_CARRY_CHARS) -> None:
        self.carry = carry
        self.findings: list[Finding] = []
        self._text = ""  # the text from self._start on
        self._start = 0
        self._settled = 0  # findings starting before this offset are taken
        self._protected: list[Span] = []  # surrogates reaching into self._text

    def feed(self, piece: str, protected: Sequence[Span] = (), final: bool = False) -> None:
        """Add the next ``piece`` and its surrogate spans (offsets in the whole text)."""
        text = self._text + piece
        spans = self._protected + list(protected)
        at = self._start
        end = at + len(text)
        limit = end if final else end - self.carry
        local = [Span(p.start - at, p.end - at, p.type) for p in spans]
        self.findings.extend(Finding(f.kind, f.start + at, f.end + at)
                             for f in residual_findings(text, local)
                             if self._settled <= f.start + at < limit)
        self._settled = max(self._settled, limit)
        keep = max(at, self._settled - self.carry)
        self._text, self._start = text[keep - at:], keep
        self._protected = [p for p in spans if p.end > keep]

    def close(self) -> list[Finding]:
        """Every finding of the whole text (:func:`residual_findings`'s order)."""
        self.feed("", final=True)
        return self.findings
