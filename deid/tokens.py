"""Tokenisation that keeps character offsets, BIO tags over PHI subtypes, and windows.

Why this tokeniser: PHI boundaries in clinical text fall inside "words" a whitespace
tokeniser would keep whole ("78yo", "MRN:4455123", "3/4/21"). Splitting letter runs, digit
runs and single symbols puts every gold boundary on a token boundary, so BIO tags can
represent the gold exactly and decoded spans map back to exact character offsets.

Windows: a tagger sees at most ``size`` tokens at a time; consecutive windows overlap and
each token takes its label from the window where it sits farthest from an edge, so long
notes are covered completely (nothing is truncated) and every token has full context.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from fedmed.deid.phi import SUBTYPES, Span

TOKEN_RE = re.compile(r"[^\W\d_]+|\d+|\S")

LABELS: tuple[str, ...] = ("O",) + tuple(
    f"{prefix}-{t}" for t in SUBTYPES for prefix in ("B", "I")
)
LABEL_INDEX: dict[str, int] = {label: i for i, label in enumerate(LABELS)}


class Token(NamedTuple):
    """A token with its offsets and the whitespace before it ("", " ", "\\n").

    A NamedTuple (not a dataclass): notes have thousands of tokens and this is built for
    each of them on the detection hot path.
    """

    text: str
    start: int
    end: int
    gap: str


def tokenize(text: str) -> list[Token]:
    """Tokens of ``text`` in order; whitespace is dropped but summarised in ``gap``."""
    tokens: list[Token] = []
    prev_end = 0
    for m in TOKEN_RE.finditer(text):
        between = text[prev_end:m.start()]
        gap = "\n" if "\n" in between else (" " if between else "")
        if not tokens:
            gap = "\n"
        tokens.append(Token(m.group(), m.start(), m.end(), gap))
        prev_end = m.end()
    return tokens


def bio_labels(tokens: Sequence[Token], spans: Iterable[Span]) -> list[str]:
    """BIO label per token; a token belongs to a span if it overlaps it."""
    labels = ["O"] * len(tokens)
    starts = [t.start for t in tokens]
    for span in sorted(spans):
        first = True
        i = max(bisect.bisect_right(starts, span.start) - 1, 0)
        while i < len(tokens) and tokens[i].start < span.end:
            if tokens[i].end > span.start:
                labels[i] = f"{'B' if first else 'I'}-{span.type}"
                first = False
            i += 1
    return labels


def decode(tokens: Sequence[Token], labels: Sequence[str],
           scores: Sequence[float] | None = None) -> list[Span]:
    """Spans from BIO labels (lenient: an I- after O or another type starts a span).

    A span's score is the mean of its tokens' scores (1.0 without scores).
    """
    spans: list[Span] = []
    cur_type: str | None = None
    cur_start = cur_end = 0
    cur_scores: list[float] = []

    def close() -> None:
        if cur_type is not None:
            spans.append(Span(cur_start, cur_end, cur_type,
                              sum(cur_scores) / len(cur_scores)))

    for i, (tok, label) in enumerate(zip(tokens, labels, strict=True)):
        score = scores[i] if scores is not None else 1.0
        if label == "O":
            close()
            cur_type = None
            continue
        prefix, typ = label.split("-", 1)
        if prefix == "B" or typ != cur_type:
            close()
            cur_type, cur_start, cur_scores = typ, tok.start, []
        cur_end = tok.end
        cur_scores.append(score)
    close()
    return spans


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` windows of at most ``size`` covering ``0..n`` with ``overlap``."""
    if size <= overlap:
        raise ValueError("window size must exceed the overlap")
    if n <= size:
        return [(0, n)]
    out, start, step = [], 0, size - overlap
    while True:
        end = min(start + size, n)
        out.append((start, end))
        if end == n:
            return out
        start += step


def owner_window(n: int, spans: Sequence[tuple[int, int]]) -> list[int]:
    """For each position, the index of the window where it is farthest from an edge.

    Consecutive windows hand over at the middle of their overlap.
    """
    owner: list[int] = []
    for w, (a, b) in enumerate(spans):
        end = b if w == len(spans) - 1 else (spans[w + 1][0] + b) // 2
        owner.extend([w] * (end - max(a, len(owner))))
    return owner[:n]
