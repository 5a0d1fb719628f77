"""Long notes through ``fedmed deid``: detected in windows, never crashed on (issue 14).

Before windowed detection a note over spaCy's 1,000,000-character ``max_length`` crashed
``deid detect``, ``deid scrub`` and the ICD node's preflight with a traceback (E088).
PHI is planted across window edges and at the very end of the note; each must be found
whole. The fast tests use a 2,000-character window (``deid.window_chars`` in a TOML);
one test runs a note over 1,000,000 characters with the default settings.
"""

from __future__ import annotations

import json

import pytest

from fedmed.cli import main
from fedmed.data.text_admission import admitted_site_notes
from fedmed.deid.config import DeidConfig
from fedmed.deid.phi import Document
from fedmed.deid.presidio_engine import owned_ranges, window_overlap
from fedmed.deid.tokens import windows

FILLER = (
    "The patient tolerated the procedure well and was transferred to the floor in stable "
    "condition. Vital signs remained within normal limits overnight. Continue the current "
    "medications, encourage ambulation and monitor the incision daily for signs of infection.\n"
)
PHI = ("MRN: 4455123", "SSN 078-05-1120", "phone (617) 555-0143", "e-mail zq@quackenbush-mail.org")
"""Planted strings; the identifier is the part after the label word."""


def value(planted: str) -> str:
    return planted.split(" ", 1)[1]


def long_note(length: int, window: int) -> tuple[str, list[tuple[int, str]]]:
    """About ``length`` characters of filler with PHI straddling every kind of window edge:
    the end of a window, the start of the next, the middle of their overlap (where one
    window's ownership hands over to the next) and the very end of the note."""
    cuts = windows(length, window, window_overlap(window))
    owned = owned_ranges(cuts)
    marks = sorted({cuts[0][1], cuts[1][0], owned[1][0], cuts[-2][1], owned[-1][0]})
    text = (FILLER * (length // len(FILLER) + 1))[:length]
    planted: list[tuple[int, str]] = []
    for i, mark in enumerate(marks):
        phi = PHI[i % len(PHI)]
        at = mark - len(phi) // 2  # the identifier crosses the edge
        text = text[:at] + " " + phi + " " + text[at + len(phi) + 2:]
        planted.append((at + 1 + len(phi) - len(value(phi)), value(phi)))
    end = " Patient seen by Dr. Ellen Ward, MRN: 9988776"
    text = text[:length - len(end)] + end
    planted.append((length - 7, "9988776"))
    assert all(text[a:a + len(v)] == v for a, v in planted)
    return text, planted


def covered(rows: list[dict], start: int, phi: str) -> bool:
    return any(r["start"] <= start and start + len(phi) <= r["end"] for r in rows)


def small_windows(tmp_path, **extra: int) -> str:
    cfg = tmp_path / "deid.toml"
    settings = {"window_chars": 2000, **extra}
    cfg.write_text("[deid]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    return str(cfg)


def test_long_note_phi_across_window_edges_detected_and_scrubbed(tmp_path, capsys) -> None:
    text, planted = long_note(30_000, 2000)
    note = tmp_path / "long.txt"
    note.write_text(text)
    cfg = small_windows(tmp_path)
    assert main(["deid", "detect", str(note), "--json", "--config", cfg]) == 0
    rows = json.loads(capsys.readouterr().out)
    missed = [(a, v) for a, v in planted if not covered(rows, a, v)]
    assert not missed, missed
    assert all(text[r["start"]:r["end"]] == r["text"] for r in rows)
    starts = [r["start"] for r in rows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # merged, no twins

    out = tmp_path / "scrubbed.txt"
    assert main(["deid", "scrub", str(note), str(out), "--config", cfg,
                 "--site-home", str(tmp_path / "site")]) == 0
    scrubbed = out.read_text()
    assert not any(v in scrubbed for _, v in planted)
    assert scrubbed.count("The patient tolerated the procedure well") == text.count(
        "The patient tolerated the procedure well")


@pytest.mark.timeout(300)  # a hang guard, not a speed target (bench/deid_throughput.py)
def test_note_over_spacy_max_length_is_detected(tmp_path, capsys) -> None:
    """Default settings (100,000-character windows), a 1,200,000-character note."""
    text, planted = long_note(1_200_000, DeidConfig().window_chars)
    assert len(text) > 1_000_000
    note = tmp_path / "huge.txt"
    note.write_text(text)
    assert main(["deid", "detect", str(note), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    missed = [(a, v) for a, v in planted if not covered(rows, a, v)]
    assert not missed, missed


def test_note_over_the_size_limit_is_quarantined_with_the_reason(tmp_path, capsys) -> None:
    text, _ = long_note(6000, 2000)
    note = tmp_path / "big.txt"
    note.write_text(text)
    out = tmp_path / "out.txt"
    site = tmp_path / "site"
    cfg = small_windows(tmp_path, max_note_chars=5000)
    assert main(["deid", "scrub", str(note), str(out), "--config", cfg,
                 "--site-home", str(site)]) == 2
    assert "quarantined 1 file(s)" in capsys.readouterr().err
    assert not out.exists()
    manifest = json.loads((tmp_path / "out.txt.manifest.json").read_text())
    entry = manifest["entries"][0]
    assert entry["outcome"] == "quarantined"
    assert entry["reasons"] == ["note of 6000 characters is over the 5000-character limit "
                                "(deid.max_note_chars)"]
    reasons = [json.loads(p.read_text()) for p in (site / "quarantine").glob("*.reason.json")]
    assert [r["reason"] for r in reasons] == entry["reasons"]


class NoDetector:
    versions = {"engine": "none"}

    def detect_batch(self, texts: list[str]) -> list[list]:
        return [[] for _ in texts]


def test_preflight_quarantines_an_over_limit_note_and_keeps_the_rest(tmp_path) -> None:
    """The ICD node's preflight (admitted_site_notes -> gate) holds the note back with a
    reason instead of crashing; the other notes are released."""
    raw = [Document("long", FILLER * 40, meta={"labels": ["I10"]}),
           Document("short", FILLER, meta={"labels": ["E11"]})]
    admission = admitted_site_notes("icd", "s", tmp_path, raw,
                                    DeidConfig(max_note_chars=5000), NoDetector())
    assert [n.labels for n in admission.notes] == [("E11",)]
    assert admission.quarantined == 1
    assert "deid.max_note_chars" in admission.summary["quarantine"][0]["reason"]


def test_scrubbing_in_pieces_gives_the_one_piece_output(tmp_path, monkeypatch) -> None:
    """Presidio is applied to ~50k-char pieces of a long note (it is quadratic on one);
    cut between spans, never between two it would join, the output is the same."""
    import re

    from fedmed.deid import surrogates
    from fedmed.deid.phi import Span
    from fedmed.deid.sitekey import SiteKey

    text = ("Dr. Ellen Ward saw John Carter  Smith, MRN 4455123, on 03/04/2021. " + FILLER) * 40
    kinds = {"Ellen Ward": "DOCTOR", "John Carter": "PATIENT", "Smith": "PATIENT",
             "4455123": "MEDICALRECORD", "03/04/2021": "DATE"}
    spans = [Span(m.start(), m.end(), kinds[m.group()])
             for m in re.finditer("|".join(kinds), text)]
    scrubber = surrogates.Scrubber(SiteKey.load_or_create(tmp_path))
    whole = scrubber.scrub(text, spans, "p1")
    monkeypatch.setattr(surrogates, "SCRUB_PIECE_CHARS", 300)
    assert len(surrogates._pieces(text, spans, 300)) > 20
    pieces = scrubber.scrub(text, spans, "p1")
    assert pieces == whole
    assert all(pieces.text[s.start:s.end] for s in pieces.replaced)


def test_residual_check_by_bisection_matches_the_pairwise_rule() -> None:
    from fedmed.deid.phi import Span
    from fedmed.deid.residual import PATTERNS, residual_findings

    text = "SSN 078-05-1120, call 617-555-0143, MRN 4455123, id 12345678. " * 3
    protected = [Span(4, 15, "SSN"), Span(0, 10, "X"), Span(20, 40, "PHONE"),
                 Span(38, 48, "X"), Span(100, 130, "X"), Span(110, 115, "X")]
    expected = sorted(
        ((kind, *m.span("value")) for kind, p in PATTERNS.items() for m in p.finditer(text)
         if not any(s.start <= m.start("value") and m.end("value") <= s.end
                    for s in protected)), key=lambda f: (f[1], f[0]))
    found = [(f.kind, f.start, f.end) for f in residual_findings(text, protected)]
    assert found == expected and len(found) < len(list(PATTERNS["SSN"].finditer(text))) * 5
