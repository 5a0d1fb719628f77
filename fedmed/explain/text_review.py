"""What the federated de-identification tagger found and missed in a site's own test notes.

A privacy officer deciding whether a federated tagger may replace the site's own needs to
see its errors on the site's notes, not only a recall figure: which PHI it missed (each miss
is a leak if the tagger guarded the gate), what it flagged that is not PHI, and how sure it
was. For each explained note the review lists every gold PHI span as *found* (no letter or
digit left uncovered, the leak rule of :func:`fedmed.deid.evaluate.leaked`) or *missed*, and
every predicted span that touches no gold span as *extra*, each with its type and the
tagger's PHI probability (deid's span score: the mean marginal PHI probability of its
tokens). The note itself is written out with the spans marked in place.

The files hold the site's raw notes, PHI included: like every explanation they are written
into the site home and never sent (:mod:`fedmed.explain.outcome`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmed.deid.evaluate import leaked
from fedmed.deid.phi import Document, Span
from fedmed.explain.outcome import markdown_code_span


def review_note(doc: Document, predicted: Sequence[Span]) -> dict[str, Any]:
    """The found / missed / extra spans of one note (see the module docstring)."""

    def entry(span: Span, score: float | None) -> dict[str, Any]:
        item: dict[str, Any] = {"start": span.start, "end": span.end, "type": span.type,
                                "text": doc.text[span.start:span.end]}
        if score is not None:
            item["probability"] = round(score, 3)
        return item

    found, missed = [], []
    for gold in doc.spans:
        touching = [p for p in predicted if p.overlaps(gold)]
        best = max((p.score for p in touching), default=None)
        (missed if leaked(gold, doc.text, predicted) else found).append(entry(gold, best))
    extra = [entry(p, p.score) for p in predicted if not any(p.overlaps(g) for g in doc.spans)]
    return {"note": doc.doc_id, "found": found, "missed": missed, "extra": extra,
            "marked": marked_text(doc.text, missed, found, extra)}


def marked_text(text: str, missed: Sequence[dict[str, Any]], found: Sequence[dict[str, Any]],
                extra: Sequence[dict[str, Any]]) -> str:
    """``text`` with ``[TYPE: …]`` around found PHI, ``[MISSED TYPE: …]`` around missed PHI
    and ``[NOT PHI? TYPE p=…: …]`` around extra spans; an extra span overlapping an earlier
    marked one is left unmarked rather than nested."""
    marks = [(m, f"MISSED {m['type']}") for m in missed] + [(m, m["type"]) for m in found]
    marks += [(m, f"NOT PHI? {m['type']} p={m['probability']:.2f}") for m in extra]
    out, cursor = [], 0
    for span, label in sorted(marks, key=lambda pair: (pair[0]["start"], -pair[0]["end"])):
        if span["start"] < cursor:
            continue
        out += [text[cursor:span["start"]], f"[{label}: {text[span['start']:span['end']]}]"]
        cursor = span["end"]
    return "".join(out + [text[cursor:]])


def write_review(records: Sequence[dict[str, Any]], out_dir: str | Path, site: str
                 ) -> list[Path]:
    """``phi-review-<site>.json`` (for tools) and ``phi-review-<site>.md`` (for people)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"phi-review-{site}.json"
    data.write_text(json.dumps(list(records), indent=2) + "\n", encoding="utf-8")
    lines = [f"# PHI review: {site}", "",
             "What the federated tagger found, missed and over-flagged on this site's first test "
             "notes. These notes hold PHI: this file stays in the site home.", ""]
    for record in records:
        lines += [f"## Note {record['note']}", "",
                  f"Found {len(record['found'])} PHI spans, missed {len(record['missed'])}, "
                  f"flagged {len(record['extra'])} that are not PHI.", ""]
        for kind in ("missed", "extra"):
            lines += [f"- {kind}: {item['type']} `{markdown_code_span(item['text'])}`"
                      + (f" (p = {item['probability']:.2f})" if "probability" in item else "")
                      for item in record[kind]]
        fence = "~~~~"
        lines += ["", fence, record["marked"].replace(fence, "~~~"), fence, ""]
    review = out / f"phi-review-{site}.md"
    review.write_text("\n".join(lines), encoding="utf-8")
    return [data, review]
