"""How much PHI got through: token, entity and document-level scores against gold.

Why several numbers (see ANCHORS "Metric conventions"): published de-id results mix token
and entity level, binary and typed, and different category maps, so a single F1 is not
comparable with anything. This module reports, for one set of gold notes:

- token level (tokens of :func:`fedmed.deid.tokens.tokenize`): typed micro P/R/F1 over
  i2b2 subtypes, and *binary* PHI-vs-not P/R/F1/F2;
- entity level: *strict* (same start, end and subtype, the i2b2-2014 ranking metric) and
  *any-overlap* (same subtype, overlapping), plus binary any-overlap;
- per subtype: gold count, strict/overlap recall, token recall, leaked entities;
- leaks: an entity is *leaked* if any of its letters/digits is left uncovered by every
  predicted span; the document leak rate is the share of notes with at least one leak;
- all of the above on the i2b2 map (every subtype), and recall/leaks on the HIPAA Safe
  Harbor map (:data:`fedmed.deid.phi.HIPAA_ITEM`; ages only over 89; DOCTOR, PROFESSION,
  STATE, COUNTRY, HOSPITAL, DEPARTMENT, ROOM, ORGANIZATION excluded);
- where the gold folder lists its non-PHI clinical terms (the realistic set,
  :mod:`fedmed.deid.realistic_notes`): *retention*, the share of those terms that no
  predicted span touches, i.e. that a scrubbed note keeps intact (:func:`retention`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from fedmed.deid.phi import DIRECT_IDENTIFIERS, HIPAA_ITEM, SUBTYPES, Document, Span, is_hipaa
from fedmed.deid.tokens import tokenize

HIPAA_MAP_NOTE = (
    "HIPAA map: Safe Harbor items per subtype " +
    ", ".join(f"{t}={HIPAA_ITEM[t] or '-'}" for t in SUBTYPES) +
    "; AGE counts only when > 89; '-' = not required by Safe Harbor (i2b2 extension)."
)


def prf(tp: int, fp: int, fn: int, beta: float | None = None) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    out = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
           "tp": tp, "fp": fp, "fn": fn}
    if beta is not None:
        b2 = beta * beta
        out[f"f{beta:g}"] = (1 + b2) * p * r / (b2 * p + r) if p + r else 0.0
    return out


def _token_types(text: str, spans: Sequence[Span]) -> list[str | None]:
    tokens = tokenize(text)
    out: list[str | None] = [None] * len(tokens)
    for i, tok in enumerate(tokens):
        for s in spans:
            if s.start < tok.end and tok.start < s.end:
                out[i] = s.type
                break
    return out


def leaked(gold: Span, text: str, preds: Sequence[Span]) -> bool:
    """True if some letter/digit of ``gold`` is covered by no predicted span."""
    covered = [False] * (gold.end - gold.start)
    for p in preds:
        for i in range(max(p.start, gold.start), min(p.end, gold.end)):
            covered[i - gold.start] = True
    return any(not c and text[gold.start + i].isalnum() for i, c in enumerate(covered))


def score(golds: Sequence[Document], preds: Sequence[Sequence[Span]]) -> dict[str, Any]:
    """All scores for gold documents and the predicted spans of each (same order)."""
    if len(golds) != len(preds):
        raise ValueError("one prediction list per gold document is required")
    tok = Counter[str]()
    ent = Counter[str]()
    per_type: dict[str, Counter[str]] = {t: Counter() for t in SUBTYPES}
    leak_docs = hipaa_leak_docs = 0
    hipaa = Counter[str]()
    for doc, pred in zip(golds, preds, strict=True):
        _count_tokens(doc, pred, tok, per_type, hipaa)
        _count_entities(doc, pred, ent, per_type)
        leaks = [g for g in doc.spans if leaked(g, doc.text, pred)]
        for g in leaks:
            per_type[g.type]["leaked"] += 1
        hipaa_gold = [g for g in doc.spans if is_hipaa(g.type, doc.text[g.start:g.end])]
        hipaa_leaks = [g for g in leaks if g in hipaa_gold]
        hipaa["entities"] += len(hipaa_gold)
        hipaa["leaked"] += len(hipaa_leaks)
        leak_docs += bool(leaks)
        hipaa_leak_docs += bool(hipaa_leaks)
    n = max(len(golds), 1)
    return {
        "documents": len(golds),
        "token": {"typed": prf(tok["tp"], tok["fp"], tok["fn"]),
                  "binary": prf(tok["btp"], tok["bfp"], tok["bfn"], beta=2)},
        "entity": {"strict": prf(ent["stp"], ent["sfp"], ent["sfn"]),
                   "overlap": prf(ent["otp"], ent["ofp"], ent["ofn"]),
                   "overlap_binary": prf(ent["btp"], ent["bfp"], ent["bfn"])},
        "doc_leak_rate": leak_docs / n,
        "hipaa": {
            "token_recall": hipaa["tp"] / (hipaa["tp"] + hipaa["fn"])
            if hipaa["tp"] + hipaa["fn"] else 1.0,
            "entities": hipaa["entities"], "leaked_entities": hipaa["leaked"],
            "doc_leak_rate": hipaa_leak_docs / n,
        },
        "per_type": {t: _type_summary(c) for t, c in per_type.items() if c["gold"]},
        "missed_direct_identifiers": {t: per_type[t]["leaked"] for t in
                                      sorted(DIRECT_IDENTIFIERS)},
        "label_map": HIPAA_MAP_NOTE,
    }


def _count_tokens(doc: Document, pred: Sequence[Span], tok: Counter[str],
                  per_type: dict[str, Counter[str]], hipaa: Counter[str]) -> None:
    gold_t = _token_types(doc.text, doc.spans)
    pred_t = _token_types(doc.text, pred)
    hipaa_spans = [s for s in doc.spans if is_hipaa(s.type, doc.text[s.start:s.end])]
    hipaa_t = _token_types(doc.text, hipaa_spans)
    for g, p, h in zip(gold_t, pred_t, hipaa_t, strict=True):
        if g and p == g:
            tok["tp"] += 1
        if p and p != g:
            tok["fp"] += 1
        if g and p != g:
            tok["fn"] += 1
        tok["btp"] += bool(g and p)
        tok["bfp"] += bool(p and not g)
        tok["bfn"] += bool(g and not p)
        if g:
            per_type[g]["tokens"] += 1
            per_type[g]["tokens_found"] += bool(p)
        if h:
            hipaa["tp" if p else "fn"] += 1


def _count_entities(doc: Document, pred: Sequence[Span], ent: Counter[str],
                    per_type: dict[str, Counter[str]]) -> None:
    gold_keys = {(s.start, s.end, s.type) for s in doc.spans}
    pred_keys = {(s.start, s.end, s.type) for s in pred}
    ent["stp"] += len(gold_keys & pred_keys)
    ent["sfp"] += len(pred_keys - gold_keys)
    ent["sfn"] += len(gold_keys - pred_keys)
    def same(a: Span, b: Span) -> bool:
        return a.overlaps(b) and a.type == b.type

    for g in doc.spans:
        per_type[g.type]["gold"] += 1
        per_type[g.type]["strict"] += (g.start, g.end, g.type) in pred_keys
        hit = any(same(g, p) for p in pred)
        per_type[g.type]["overlap"] += hit
        ent["otp"] += hit
        ent["ofn"] += not hit
        ent["bfn"] += not any(g.overlaps(p) for p in pred)
        ent["btp"] += any(g.overlaps(p) for p in pred)
    for p in pred:
        ent["ofp"] += not any(same(g, p) for g in doc.spans)
        ent["bfp"] += not any(g.overlaps(p) for g in doc.spans)


def _type_summary(c: Counter[str]) -> dict[str, float | int]:
    return {
        "gold": c["gold"], "strict_recall": c["strict"] / c["gold"],
        "overlap_recall": c["overlap"] / c["gold"],
        "token_recall": c["tokens_found"] / c["tokens"] if c["tokens"] else 1.0,
        "leaked": c["leaked"],
    }


Term = tuple[int, int, str]
"""A gold clinical term: start, end, text."""


def retention(terms: Sequence[Sequence[Term]], preds: Sequence[Sequence[Span]],
              examples: int = 15) -> dict[str, Any]:
    """Share of gold clinical terms that survive scrubbing intact, per note ``terms``.

    Why: precision counts wrongly flagged *tokens*; what a coder or a downstream model
    loses is whole terms ("ATORVASTATIN", "Positive pedal pulses"). A term is retained when
    no predicted span overlaps any of its characters (a surrogate or a redaction anywhere
    inside it changes it). ``lost`` lists the most often lost terms (lower-cased) with the
    subtype that hit them most, to show what the detector mistakes for PHI.
    """
    if len(terms) != len(preds):
        raise ValueError("one term list per predicted span list is required")
    total = kept = 0
    lost: Counter[str] = Counter()
    lost_as: dict[str, Counter[str]] = {}
    for note_terms, pred in zip(terms, preds, strict=True):
        for start, end, text in note_terms:
            total += 1
            hits = [p for p in pred if p.start < end and start < p.end]
            if not hits:
                kept += 1
                continue
            key = text.lower()
            lost[key] += 1
            lost_as.setdefault(key, Counter()).update(p.type for p in hits)
    return {"terms": total, "retained": kept, "rate": kept / total if total else 1.0,
            "lost": [{"term": t, "count": c, "as": lost_as[t].most_common(1)[0][0]}
                     for t, c in lost.most_common(examples)]}


def format_report(result: dict[str, Any], title: str = "") -> str:
    """A plain-text table of :func:`score` output (what ``fedmed deid eval`` prints)."""

    def row(name: str, m: dict[str, float]) -> str:
        return f"  {name:<22} P {m['precision']:.4f}  R {m['recall']:.4f}  F1 {m['f1']:.4f}"

    lines = [title] if title else []
    lines += [f"documents: {result['documents']}",
              row("token typed", result["token"]["typed"]),
              row("token binary", result["token"]["binary"])
              + f"  F2 {result['token']['binary']['f2']:.4f}",
              row("entity strict", result["entity"]["strict"]),
              row("entity any-overlap", result["entity"]["overlap"]),
              row("entity overlap binary", result["entity"]["overlap_binary"]),
              f"  document leak rate (i2b2 map): {result['doc_leak_rate']:.4f}",
              f"  HIPAA map: token recall {result['hipaa']['token_recall']:.4f}, leaked "
              f"{result['hipaa']['leaked_entities']}/{result['hipaa']['entities']} entities, "
              f"document leak rate {result['hipaa']['doc_leak_rate']:.4f}",
              "  missed direct identifiers: " + ", ".join(
                  f"{k} {v}" for k, v in result["missed_direct_identifiers"].items()),
              f"  {'subtype':<15}{'gold':>6}{'strict R':>10}{'overlap R':>11}{'token R':>9}"
              f"{'leaked':>8}"]
    for t, m in result["per_type"].items():
        lines.append(f"  {t:<15}{m['gold']:>6}{m['strict_recall']:>10.3f}"
                     f"{m['overlap_recall']:>11.3f}{m['token_recall']:>9.3f}{m['leaked']:>8}")
    if "retention" in result:
        ret = result["retention"]
        lines.append(f"  clinical-term retention: {ret['rate']:.4f} ({ret['retained']}/"
                     f"{ret['terms']} terms intact)")
        if ret["lost"]:
            lines.append("  most often lost: " + ", ".join(
                f"{x['term']} x{x['count']} ({x['as']})" for x in ret["lost"][:10]))
    if "timing" in result:
        t = result["timing"]
        lines.append(f"  detection: {t['seconds']:.1f} s, {t['notes_per_s']:.1f} notes/s "
                     f"(one process unless workers are set; load time excluded)")
    lines.append("  " + result["label_map"])
    return "\n".join(lines)
