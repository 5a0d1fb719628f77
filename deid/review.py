"""Review pages for a site's annotators, most uncertain notes first (issue 15 item 4, part).

Why: a site improves its tagger fastest by correcting the notes the tagger is least sure
about (uncertainty sampling), and an annotator needs to see the detected spans in the note,
offline, and to hand back corrections in a format training reads. ``fedmed deid review``
detects PHI in a site's notes, ranks them by :func:`uncertainty`, and writes for the top
notes one self-contained HTML page (spans highlighted with type and score; no script, no
network) and one i2b2-2014 XML file with the detected spans as tags, to be corrected in any
editor and then used as training notes (``DIR/train``, ``DIR/dev``; ``fedmed deid train
--corpus DIR``). Everything is written under the folder given, which should lie in the site
home: notes are raw PHI.

The corrected folder is then training data as it stands: ``fedmed deid train --from-review
DIR`` fine-tunes the site's tagger on it (:mod:`fedmed.deid.review_training`);
``bench/deid_active_learning.py`` measures uncertainty against random choice.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedmed.deid.io import write_i2b2
from fedmed.deid.phi import Document, Span

UNSURE = 0.5
"""Span score of greatest doubt: the tagger's spans score their mean PHI probability."""


def uncertainty(spans: Sequence[Span]) -> float:
    """How unsure the detector was about a note: the sum over its spans of
    ``1 - |score - 0.5| / 0.5`` (1 for a span at 0.5, 0 for one at 0 or 1).

    A sum, not a mean: a note with many doubtful spans teaches more than one with a
    single one. Rule spans carry their pattern's confidence as score and count alike.
    """
    return sum(1.0 - min(1.0, abs(s.score - UNSURE) / UNSURE) for s in spans)


@dataclass
class Reviewed:
    """One note to review: the note, its detected spans and its uncertainty."""

    doc: Document
    spans: list[Span]
    uncertainty: float


def rank(docs: Sequence[Document], spans: Sequence[Sequence[Span]]) -> list[Reviewed]:
    """Notes with their spans, most uncertain first (ties: input order)."""
    items = [Reviewed(d, list(s), uncertainty(s)) for d, s in zip(docs, spans, strict=True)]
    return sorted(items, key=lambda r: -r.uncertainty)


def page(item: Reviewed, rank_no: int) -> str:
    """A self-contained HTML page of one note with its spans highlighted."""
    text = item.doc.text
    parts, pos = [], 0
    for s in sorted(item.spans):
        if s.start < pos:
            continue
        score = f" {s.score:.2f}"
        doubt = " doubt" if 0.2 <= s.score <= 0.8 else ""
        parts.append(html.escape(text[pos:s.start]))
        parts.append(f'<mark class="{html.escape(s.type)}{doubt}" title="'
                     f'{html.escape(s.type)}{score}">{html.escape(text[s.start:s.end])}'
                     f"<sub>{html.escape(s.type)}{score}</sub></mark>")
        pos = s.end
    parts.append(html.escape(text[pos:]))
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>review {rank_no}: {html.escape(item.doc.doc_id)}</title><style>"
        "body{font-family:sans-serif;margin:2em} pre{white-space:pre-wrap;font-size:14px}"
        "mark{background:#ffe08a} mark.doubt{background:#ffb3b3} sub{font-size:9px;"
        "color:#555}</style></head><body>"
        f"<h1>#{rank_no} {html.escape(item.doc.doc_id)}</h1>"
        f"<p>uncertainty {item.uncertainty:.2f}; {len(item.spans)} spans detected; red = "
        "score between 0.2 and 0.8. Correct the spans in the XML file beside this page "
        f"({html.escape(_stem(item, rank_no))}.xml): fix, add or delete tags.</p>"
        f"<pre>{''.join(parts)}</pre></body></html>\n")


def _stem(item: Reviewed, rank_no: int) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in item.doc.doc_id)
    return f"{rank_no:04d}-{safe}"


def write_review(out: str | Path, ranked: Sequence[Reviewed], top: int) -> list[dict[str, object]]:
    """Write the ``top`` most uncertain notes' pages and XML files and ``index.html`` /
    ``index.json`` into ``out``; returns the index rows."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for n, item in enumerate(ranked[:top], start=1):
        stem = _stem(item, n)
        (root / f"{stem}.html").write_text(page(item, n), encoding="utf-8")
        write_i2b2(root / f"{stem}.xml", Document(item.doc.doc_id, item.doc.text, item.spans))
        rows.append({"rank": n, "doc_id": item.doc.doc_id, "uncertainty": item.uncertainty,
                     "spans": len(item.spans), "page": f"{stem}.html", "xml": f"{stem}.xml"})
    links = "".join(f'<li><a href="{r["page"]}">{html.escape(str(r["doc_id"]))}</a> '
                    f'(uncertainty {float(r["uncertainty"]):.2f})</li>'  # type: ignore[arg-type]
                    for r in rows)
    (root / "index.html").write_text(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>de-id review</title>"
        f"</head><body><h1>Notes to review, most uncertain first</h1><ol>{links}</ol>"
        "</body></html>\n", encoding="utf-8")
    (root / "index.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows
