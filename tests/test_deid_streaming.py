"""Plain-text notes streamed through the gate (``fedmed.deid.stream``, issue 14).

``deid scrub`` reads a plain-text note window by window and writes each stretch no later
window can change; these tests hold it to the in-memory gate: the same spans and the same
output bytes on a note of four windows (the real detector, 2,000-character windows), the
same output where a stretch must end early (spans Presidio would join across a window's
edge; a planted detector, 400-character windows), the same residual findings, and the same
errors for files that are not UTF-8 text.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from unittest import mock

import pytest
from fuzz_strategies import FUZZ, mutated_text
from hypothesis import example, given
from hypothesis import strategies as st

from fedmed.deid import stream
from fedmed.deid.config import DeidConfig
from fedmed.deid.corpus import generate
from fedmed.deid.gate import Gate
from fedmed.deid.phi import Document, Span
from fedmed.deid.presidio_engine import Detector, owned_ranges, window_overlap
from fedmed.deid.residual import ResidualStream, residual_findings
from fedmed.deid.sitekey import SECRET_RELPATH, SiteKey
from fedmed.deid.surrogates import Scrubber
from fedmed.deid.tokens import windows
from fedmed.errors import DataError


def site_home(tmp_path: Path) -> Path:
    """A site home with a fixed de-id secret, so the surrogates (and whether the residual
    check finds something next to one) are the same at every run."""
    secret = tmp_path / "site" / SECRET_RELPATH
    secret.parent.mkdir(parents=True)
    secret.write_text(bytes(range(32)).hex())
    secret.chmod(0o600)
    return tmp_path / "site"


def test_a_streamed_note_of_four_windows_is_the_in_memory_note(tmp_path) -> None:
    notes = (note.text for note in generate(12, 5, "test"))
    text = ""
    while len(text) < 5_500:
        text += next(notes) + "\n"
    text = text[:5_500]
    config = DeidConfig(window_chars=2_000, workers=1)
    assert len(windows(len(text), 2_000, window_overlap(2_000))) == 4
    src = tmp_path / "note.txt"
    src.write_text(text, encoding="utf-8")
    gate = Gate(site_home(tmp_path), config, Detector(config))

    spans = gate.detector.detect(text)
    streamed = stream.settled_segments(gate.detector, stream.scan_text_file(src))
    assert [s for _, _, part in streamed for s in part] == spans
    in_memory, streaming = gate.batch("text"), gate.batch("text")
    released = gate.admit_documents([Document("note", text)], in_memory)
    assert gate.scrub_text_file(src, tmp_path / "out.txt", streaming)
    assert len(released) == 1
    assert (tmp_path / "out.txt").read_bytes() == released[0].text.encode("utf-8")
    first, second = (gate.finish(b, {}) for b in (in_memory, streaming))
    for key in ("items", "phi_counts", "residual_check", "input_digest", "released_sha256"):
        assert first[key] == second[key], key


class PlantedDetector:
    """A detector whose spans are its regex's matches in each window: capitalised words are
    PATIENT and digit runs IDNUM; windows, owners and merging are the real detector's."""

    detect_windows = Detector.detect_windows
    _detect_long = Detector._detect_long
    WORDS = re.compile(r"[A-Z][a-z]+|\d+")

    def __init__(self, window_chars: int) -> None:
        self.config = DeidConfig(window_chars=window_chars, workers=1)
        self.workers = 1
        self._pool = None

    def _detect_here(self, pieces: list[str]) -> list[list[Span]]:
        return [[Span(m.start(), m.end(), "IDNUM" if m.group().isdigit() else "PATIENT")
                 for m in self.WORDS.finditer(piece)] for piece in pieces]


def planted_note(length: int, window: int) -> str:
    """Filler (with two-byte characters, so chunks end inside them) and, at every hand-over
    between windows, spans Presidio would join (one type, only spaces between) across it."""
    filler = "the café note goes on; "
    text = list((filler * (length // len(filler) + 1))[:length])
    cuts = windows(length, window, window_overlap(window))
    for i, (start, _) in enumerate(owned_ranges(cuts)[1:]):
        planted = ("Ann   Lee", "Bo Lu Ed", "12 345", "Ann,Lee")[i % 4]
        at = start - 4 + i % 5  # across the hand-over, at varying places
        text[at:at + len(planted)] = planted
    return "".join(text)[:length - 3] + "Zed"


@pytest.mark.parametrize("mode", ["redact", "surrogate"])
def test_a_stretch_never_ends_between_spans_presidio_would_join(tmp_path, monkeypatch,
                                                                  mode) -> None:
    monkeypatch.setattr(stream, "CHUNK_BYTES", 97)
    detector = PlantedDetector(400)
    text = planted_note(6_000, 400)
    src = tmp_path / "planted.txt"
    src.write_text(text, encoding="utf-8")
    scan = stream.scan_text_file(src)
    assert scan.shape.chars == len(text)
    scrubber = Scrubber(SiteKey(bytes(32)), mode)
    spans = detector._detect_long(text)
    whole = scrubber.scrub(text, spans, "p1")
    out = io.BytesIO()
    note = stream.scrub_stream(detector, scrubber, scan, "p1", out)
    assert out.getvalue().decode("utf-8") == whole.text
    assert note.released_sha256 == hashlib.sha256(whole.text.encode("utf-8")).digest()
    assert note.findings == residual_findings(whole.text, whole.replaced)
    assert sum(note.counts.values()) == len(spans)
    if mode == "redact":  # the joins happened: one tag for "Ann   Lee", none split
        assert whole.text.count("[PATIENT]") < sum(s.type == "PATIENT" for s in spans)


def test_the_residual_check_in_pieces_finds_what_it_finds_in_the_whole_text() -> None:
    text = ("SSN 078-05-1120 and (617) 555-0143, zq@example.org; MRN: A-1234567 x "
            "12345678 ") * 12
    protected = [Span(m.start(), m.end(), "X") for m in re.finditer(r"555-0143", text)]
    expected = residual_findings(text, protected)
    for size in (7, 31, 80, 500):
        scan = ResidualStream(carry=60)
        for at in range(0, len(text), size):
            scan.feed(text[at:at + size], [p for p in protected if at <= p.start < at + size])
        assert scan.close() == expected, size


def test_a_scan_measures_what_the_gate_checks(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(stream, "CHUNK_BYTES", 5)
    text = "Zoë\x07 saw Dr. Ørsted\r\n on 3/4/21.\n" * 5
    path = tmp_path / "note.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    scan = stream.scan_text_file(path)
    assert scan.shape == stream.NoteShape.of(text)
    assert scan.sha256 == hashlib.sha256(text.encode("utf-8")).digest()
    assert scan.shape.control == 5 and scan.text_offset == 3


def test_detect_jsonl_streams_the_rows_detect_json_lists(tmp_path, capsys) -> None:
    from fedmed.cli import main

    text = planted_note(3_000, 400) + "\nSeen by Dr. Ellen Ward, MRN: 9988776, 03/04/2021.\n"
    note = tmp_path / "note.txt"
    note.write_text(text, encoding="utf-8")
    cfg = tmp_path / "deid.toml"
    cfg.write_text("[deid]\nwindow_chars = 400\nworkers = 1\n")
    assert main(["deid", "detect", str(note), "--json", "--config", str(cfg)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert main(["deid", "detect", str(note), "--jsonl", "--config", str(cfg)]) == 0
    streamed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert streamed == listed
    assert all(any(v in r["text"] for r in listed) for v in ("Ellen Ward", "9988776"))
    assert all(text[r["start"]:r["end"]] == r["text"] for r in listed)


@FUZZ
@given(data=st.one_of(mutated_text("Zoë saw Dr. Ørsted on 3/4/21.\r\n\x07 MRN 4455123\n"),
                      st.binary(max_size=64)))
@example(data=b"\xef\xbb\xbf")
@example(data=b"\xef\xbb")
@example(data="ok\u00e9".encode() + b"\xff" + b"x" * 30 + b"\x00")  # not UTF-8, then NUL
@example(data=b"\xef\xbb\xbf" + "caf\u00e9 ".encode() * 4 + b"\xc3(")  # BOM, bad byte later
@example(data=b"abcdefghij\xe2\x82")  # a character cut off at the end
@example(data=b" \n\t \n")  # no text
def test_a_scan_agrees_with_read_text_on_any_bytes(tmp_path: Path, data: bytes) -> None:
    """The streamed reader is a parser a site runs on its files: fuzzed against the
    whole-file one (``make fuzz`` runs it longer), chunks of 5 bytes."""
    from fedmed.deid.io import read_text

    path = tmp_path / "note.txt"
    path.write_bytes(data)
    with mock.patch.object(stream, "CHUNK_BYTES", 5):
        try:
            text = read_text(path)
        except DataError as whole:
            with pytest.raises(DataError) as scanned:
                stream.scan_text_file(path)
            assert str(scanned.value) == str(whole)
            return
        scan = stream.scan_text_file(path)
    assert scan.shape == stream.NoteShape.of(text)
    assert scan.sha256 == hashlib.sha256(text.encode("utf-8")).digest()
