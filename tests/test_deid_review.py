"""``fedmed deid review``: notes ranked by the detector's doubt, pages and editable XML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmed.deid import cli
from fedmed.deid.io import read_i2b2
from fedmed.deid.phi import Document, Span
from fedmed.deid.review import page, rank, uncertainty


def test_uncertainty_peaks_at_half_and_adds_up() -> None:
    assert uncertainty([]) == 0.0
    assert uncertainty([Span(0, 1, "AGE", 1.0), Span(2, 3, "AGE", 0.0)]) == 0.0
    assert uncertainty([Span(0, 1, "AGE", 0.5)]) == pytest.approx(1.0)
    assert uncertainty([Span(0, 1, "AGE", 0.25), Span(2, 3, "AGE", 0.75)]) == pytest.approx(1.0)


def test_rank_puts_the_most_doubtful_note_first() -> None:
    docs = [Document("sure", "x"), Document("unsure", "y"), Document("none", "z")]
    spans = [[Span(0, 1, "PATIENT", 0.99)], [Span(0, 1, "PATIENT", 0.45)], []]
    assert [r.doc.doc_id for r in rank(docs, spans)] == ["unsure", "sure", "none"]


def test_page_escapes_the_note_and_marks_spans() -> None:
    item = rank([Document("n1", "<b>Pt John Smith</b>")], [[Span(6, 16, "PATIENT", 0.4)]])[0]
    html = page(item, 1)
    assert "&lt;b&gt;Pt " in html and "<b>Pt" not in html
    assert '<mark class="PATIENT doubt" title="PATIENT 0.40">John Smith' in html


def test_review_command_writes_pages_and_xml(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("Patient: Stephanie Miller   MRN: 40517723\nPrednisone 20 mg.\n")
    (notes / "b.txt").write_text("Seen by Dr. Keane on 3/4/2019. Call 617-555-0199.\n")
    (notes / "c.txt").write_text("No acute distress.\n")
    out = tmp_path / "review"
    assert cli.main(["deid", "review", str(notes), "--out", str(out), "--top", "2",
                     "--engine", "tagger"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(out), "notes": 3, "written": 2}
    index = json.loads((out / "index.json").read_text())
    assert [r["rank"] for r in index] == [1, 2]
    assert index[0]["uncertainty"] >= index[1]["uncertainty"]
    for row in index:
        assert (out / row["page"]).read_text().startswith("<!doctype html>")
        doc = read_i2b2(out / row["xml"])
        assert len(doc.spans) == row["spans"]
    assert "index.html" in {p.name for p in out.iterdir()}
