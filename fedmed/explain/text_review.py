"""What the federated de-identification tagger found and missed in a site's own test notes.

A privacy officer deciding whether a federated tagger may replace the site's own needs to
see its errors on the site's notes, not only a recall figure: which PHI it missed (each miss
is a leak if the tagger guarded the gate), what it flagged that is not PHI, and how sure it
was. For each explained note the review lists every gold PHI span as *found* (no letter or
digit left uncovered, the leak rule of :func:`fedmed.deid.evaluate.leaked`) or *missed*, and
every predicted span that touches no gold span as *extra*, each with its type and the
tagger's PHI probability (deid's span score: the mean marginal PHI probability of its
tokens). The note itself is written out with the spans marked in place.

:class:`PhiReview` is the explainer (``deid-ner`` declares it with its own tagger); the
review is written as ``phi-review-<site>.json`` and ``.md`` by the JSON + Markdown writer
every text explainer shares (:func:`fedmed.explain.base.write_json_and_markdown`).

The files hold the site's raw notes, PHI included: like every explanation they are written
into the site home and never sent (:mod:`fedmed.explain.outcome`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from fedmed.deid.evaluate import leaked
from fedmed.deid.phi import Document, Span
from fedmed.errors import ConfigError
from fedmed.explain.base import Explainer, markdown_code_span, write_json_and_markdown

# The tagger under review: (model, note texts) → the PHI spans it predicts in each note.
Tagger = Callable[[nn.Module, list[str]], list[list[Span]]]


class PhiReview(Explainer):
    """The PHI a tagger found, missed and over-flagged on a site's first test notes.

    ``tag`` runs the model as a tagger; the examples must carry their annotated notes as
    ``documents`` (deid-ner's ``NoteWindows`` does). The files hold the notes, PHI included.
    """

    kind = "PHI review per note: found, missed and over-flagged spans (JSON, Markdown)"

    def __init__(self, tag: Tagger) -> None:
        self.tag = tag

    def explain(
        self, model: nn.Module, examples: Dataset, site: str, out_dir: Path, n: int = 4
    ) -> list[Path]:
        documents: Sequence[Document] | None = getattr(examples, "documents", None)
        if documents is None:
            raise ConfigError("a PHI review needs test examples that carry their annotated "
                              "notes (documents), such as deid-ner's NoteWindows")
        documents = documents[:n]
        predicted = self.tag(model, [doc.text for doc in documents])
        records = [review_note(doc, spans) for doc, spans in zip(documents, predicted, strict=True)]
        return write_review(records, out_dir, site)


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
    return write_json_and_markdown(records, review_markdown(records, site), out_dir,
                                   f"phi-review-{site}")


def review_markdown(records: Sequence[dict[str, Any]], site: str) -> list[str]:
    """The lines of ``phi-review-<site>.md``: per note its counts, its misses and extras, and
    the marked note in a fence."""
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
    return lines
