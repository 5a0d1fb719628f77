"""Scores: perfect, partial and leaked predictions give the expected numbers."""

from __future__ import annotations

from fedmed.deid.evaluate import format_report, leaked, score
from fedmed.deid.phi import Document, Span

TEXT = "John Smith, 93 yo, MRN 1234567, seen by Dr. Lee on 3/4/2020."
GOLD = Document("d", TEXT, [Span(0, 10, "PATIENT"), Span(12, 14, "AGE"),
                            Span(23, 30, "MEDICALRECORD"), Span(44, 47, "DOCTOR"),
                            Span(51, 59, "DATE")])


def test_perfect_prediction() -> None:
    r = score([GOLD], [GOLD.spans])
    assert r["token"]["binary"]["recall"] == 1.0 and r["entity"]["strict"]["f1"] == 1.0
    assert r["doc_leak_rate"] == 0.0 and r["hipaa"]["leaked_entities"] == 0
    assert "HIPAA map" in format_report(r)


def test_partial_and_missed() -> None:
    pred = [Span(0, 4, "PATIENT"), Span(12, 14, "AGE"), Span(23, 30, "IDNUM"),
            Span(51, 59, "DATE"), Span(32, 36, "DATE")]
    r = score([GOLD], [pred])
    assert leaked(GOLD.spans[0], TEXT, pred)  # "Smith" uncovered
    assert r["per_type"]["PATIENT"]["leaked"] == 1 and r["per_type"]["DOCTOR"]["leaked"] == 1
    assert r["missed_direct_identifiers"]["PATIENT"] == 1
    assert r["missed_direct_identifiers"]["MEDICALRECORD"] == 0  # covered, wrong type
    assert r["entity"]["strict"]["tp"] == 2 and r["entity"]["overlap"]["tp"] == 3
    assert r["entity"]["overlap_binary"]["tp"] == 4
    assert r["doc_leak_rate"] == 1.0
    # HIPAA map: DOCTOR is not Safe Harbor PHI; the 93-year-old's age is
    assert r["hipaa"]["entities"] == 4 and r["hipaa"]["leaked_entities"] == 1
    assert r["token"]["binary"]["fp"] == 1
