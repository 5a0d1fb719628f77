"""Notes inside JSONL and CSV files, and a site's notes at node admission, streamed (issue 14).

A note longer than ``deid.window_chars`` inside a record is spilled to a private file as it
is decoded and scrubbed from there window by window (``fedmed.deid.records``,
``fedmed.deid.notetext``, ``Gate.admit_stream``). These tests hold that path to the in-memory
one — the same output bytes and report through ``fedmed deid scrub`` and ``detect``, the same
cache file through the node's admission — and measure that memory does not grow with the
note (``tracemalloc``, a planted detector, 0.25 MB against 1 MB notes). The parsers are held
to ``json.loads``/``pandas`` on fuzzed files, whole against piece by piece.
"""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from fuzz_strategies import FUZZ, mutated_text
from hypothesis import given
from test_deid_admission import deployed_node, with_deid
from test_deid_streaming import PlantedDetector, site_home

from fedmed.cli import main
from fedmed.data.icd_notes import NOTES_FILE, read_site_notes, site_notes
from fedmed.data.icd_synth import CODE_IDS
from fedmed.data.text_admission import admitted_notes, admitted_site_notes
from fedmed.deid import presidio_engine, stream
from fedmed.deid.config import DeidConfig
from fedmed.deid.corpus import generate
from fedmed.deid.gate import SPILL_DIR, Gate
from fedmed.deid.io import read_csv, read_jsonl, read_notes
from fedmed.deid.notetext import Spill, SpilledText, text_pieces
from fedmed.deid.presidio_engine import Detector
from fedmed.deid.records import CsvWriter, csv_records, json_pieces, jsonl_notes
from fedmed.deid.sitekey import SECRET_RELPATH
from fedmed.errors import DataError

WINDOW = 2_000
"""``deid.window_chars`` of these tests: a note longer than this is spilled."""


def settings(tmp_path: Path) -> Path:
    cfg = tmp_path / "deid.toml"
    cfg.write_text(f"[deid]\nwindow_chars = {WINDOW}\nworkers = 1\n")
    return cfg


def long_note(chars: int) -> str:
    """Synthetic test notes (realistic PHI) joined to ``chars`` characters."""
    notes = (note.text for note in generate(12, 5, "test"))
    text = ""
    while len(text) < chars:
        text += next(notes) + "\n"
    return text[:chars]


RECORDS = [
    {"id": "n0", "patient_id": "p1", "text": "Seen by Dr. Ellen Ward, MRN: 9988776, 03/04/2021."},
    {"id": "n1", "patient_id": "p1", "text": long_note(6_000) + ' "Zoë", café, 😀\n\tend',
     "n": [1, {"a": None}]},
    {"id": "n2", "text": 'Call (617) 555-0143, "quoted", a, b\nsecond line'},
]


def write_records(path: Path, records: list[dict]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        encoding="utf-8")
    else:
        frame = pd.DataFrame([{k: str(v) for k, v in r.items() if k != "n"} for r in records])
        frame.fillna("").to_csv(path, index=False)


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(DeidConfig(window_chars=WINDOW, workers=1))


def in_memory_scrub(src: Path, home: Path, detector: Detector) -> tuple[bytes, dict]:
    """What ``deid scrub`` wrote for a CSV or JSONL file when it read it whole: every note
    through ``Gate.admit_documents`` at once, the file written by pandas or ``json.dumps``."""
    gate = Gate(home, detector.config, detector)
    batch = gate.batch("text")
    docs = read_notes(src)
    released = {d.doc_id: d for d in gate.admit_documents(docs, batch)}
    out = [released.get(gate.pseudonym("doc", d.doc_id)) for d in docs]
    if src.suffix == ".csv":
        frame = read_csv(src, "text")
        keep = [i for i, d in enumerate(out) if d is not None]
        frame = frame.iloc[keep].copy()
        frame["text"] = [out[i].text for i in keep]
        data = frame.to_csv(index=False).encode("utf-8")
    else:
        data = "".join(json.dumps({**r, "text": d.text, "patient_id": d.meta["patient"]},
                                  ensure_ascii=False) + "\n"
                       for r, d in zip(read_jsonl(src), out, strict=True) if d is not None
                       ).encode("utf-8")
    return data, gate.finish(batch, {})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_scrub_streams_a_long_note_in_a_record_file_to_the_in_memory_bytes(
        tmp_path: Path, detector: Detector, suffix: str) -> None:
    src, out = tmp_path / f"notes{suffix}", tmp_path / f"out{suffix}"
    write_records(src, RECORDS)
    home = site_home(tmp_path)
    assert main(["deid", "scrub", str(src), str(out), "--config", str(settings(tmp_path)),
                 "--site-home", str(home)]) == 0
    manifest = json.loads((tmp_path / f"out{suffix}.manifest.json").read_text())
    (report,) = [json.loads(p.read_text()) for p in (home / "deid" / "reports").iterdir()]
    expected, whole = in_memory_scrub(src, home, detector)
    assert out.read_bytes() == expected
    assert "Ellen Ward" not in out.read_text() and "555-0143" not in out.read_text()
    for key in ("items", "phi_counts", "residual_check", "input_digest", "released_sha256"):
        assert report[key] == whole[key], key
    assert manifest["entries"][0]["outcome"] == "scrubbed"
    assert not any((home / SPILL_DIR).iterdir())  # the long note's raw copy is gone


def test_detect_streams_a_long_note_in_a_record_file_as_the_in_memory_spans(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], detector: Detector) -> None:
    src = tmp_path / "notes.jsonl"
    write_records(src, RECORDS)
    assert main(["deid", "detect", str(src), "--json", "--config", str(settings(tmp_path))]) == 0
    rows = json.loads(capsys.readouterr().out)
    texts = [r["text"] for r in RECORDS]
    expected = [{"file": str(src), **s.to_dict(text), "record": i}
                for i, (text, spans) in enumerate(zip(texts, detector.detect_batch(texts),
                                                      strict=True))
                for s in spans]
    assert rows == expected
    assert any(r["record"] == 1 and r["start"] > WINDOW for r in rows)  # from the spilled note


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_field_too_long_to_hold_is_quarantined_naming_its_line_and_the_limit(
        tmp_path: Path, suffix: str) -> None:
    """A field other than the note that is longer than a window is not read into memory:
    its record is quarantined with the reason, the others are scrubbed and written."""
    records = [{"text": "first note", "comment": "short"},
               {"text": "second note", "comment": "x" * (WINDOW + 1)},
               {"text": "third note", "comment": "short"}]
    src, out, home = tmp_path / f"n{suffix}", tmp_path / f"o{suffix}", tmp_path / "site"
    write_records(src, records)
    assert main(["deid", "scrub", str(src), str(out), "--config", str(settings(tmp_path)),
                 "--site-home", str(home), "--engine", "presidio"]) == 2
    entry = json.loads((tmp_path / f"o{suffix}.manifest.json").read_text())["entries"][0]
    assert entry["outcome"] == "partly quarantined" and entry["input"] == src.name
    line = 2 if suffix == ".jsonl" else 3
    assert entry["reasons"] == [f"line {line}: field 'comment' is longer than 2,000 characters "
                                "(deid.window_chars), more than a record's fields other than "
                                "its note are read into memory"]
    (reason,) = [json.loads(p.read_text()) for p in (home / "quarantine").glob("*.reason.json")]
    assert reason["source"] == "n-1"  # the file's stem and the record's number
    kept = read_notes(out)
    assert [d.text for d in kept] == ["first note", "third note"]


class Planted(PlantedDetector):
    """The planted detector of ``test_deid_streaming`` (capitalised words and digit runs, the
    real windows) as the CLI and the gate build a detector: fast enough for megabytes."""

    detect_batch = Detector.detect_batch
    _detect_short = Detector._detect_short
    versions = {"engine": "planted"}

    def __init__(self, config: DeidConfig | None = None) -> None:
        super().__init__((config or DeidConfig()).window_chars)

    def start_workers(self) -> int:
        return 1


FILLER = ("seen in clinic today, no change in the plan; the patient is to call if worse.\n"
          * 24 + "Call Ann Lee at 5551234.\n")


def write_long_record(path: Path, chars: int) -> None:
    """A record file whose second record holds a note of ``chars`` characters, written a
    piece at a time (the test process does not hold it either)."""
    with open(path, "w", encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            f.write('{"id": "a", "text": "short Ann"}\n{"id": "b", "patient_id": "p1", "text": "')
            for _ in range(-(-chars // len(FILLER))):
                f.write(json.dumps(FILLER)[1:-1])
            f.write('", "n": 1}\n{"id": "c", "text": "last"}\n')
        else:
            f.write('id,text\na,short Ann\nb,"')
            for _ in range(-(-chars // len(FILLER))):
                f.write(FILLER)
            f.write('"\nc,last\n')


def peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


SMALL, LARGE = 250_000, 1_000_000


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_scrub_memory_does_not_grow_with_a_long_note_in_a_record_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """Held whole, a note costs ~14 bytes a character (docs/deid.md): 4x the note would add
    ~10 MB here. Streamed, the peak is chunks and windows: it may not grow by a tenth of the
    note's growth (it grows by ~0.1 MB: allocator noise, more surrogates cached)."""
    monkeypatch.setattr(presidio_engine, "Detector", Planted)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1 << 16)
    cfg, home = settings(tmp_path), site_home(tmp_path)

    def scrub(chars: int) -> int:
        src, out = tmp_path / f"in-{chars}{suffix}", tmp_path / f"out-{chars}{suffix}"
        write_long_record(src, chars)
        peak = peak_bytes(lambda: main(["deid", "scrub", str(src), str(out), "--config",
                                        str(cfg), "--site-home", str(home)]))
        assert out.stat().st_size > 0.9 * chars and "Ann Lee" not in out.read_text()
        return peak

    scrub(5_000)  # first-use allocations (imports, caches), not counted
    small, large = scrub(SMALL), scrub(LARGE)
    assert large - small < (LARGE - SMALL) / 10, (small, large)
    assert large < LARGE, (small, large)


def write_site(folder: Path, long_text: str | None = None, chars: int = 0) -> Path:
    """A site's ``notes.jsonl``: two short notes and a long one (given, or ``chars`` of
    :data:`FILLER` written a piece at a time)."""
    path = folder / "north" / NOTES_FILE
    path.parent.mkdir(parents=True)
    short = [{"id": "s1", "text": "Pt Zebulon Quixote, MRN 48213377, seen 03/04/2024 for HTN.",
              "codes": ["I10"], "split": "train", "identifiers": ["Quixote"]},
             {"id": "s2", "text": "Seen by Dr. Ada Brandt for type 2 diabetes.",
              "codes": ["E11.9"], "split": "test"}]
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(short[0]) + "\n")
        f.write('{"id": "long", "codes": ["I10"], "split": "train", "patient_id": "p7", '
                '"identifiers": ["Quixote"], "text": "')
        if long_text is not None:
            f.write(json.dumps(long_text)[1:-1])
        for _ in range(-(-chars // len(FILLER))):
            f.write(json.dumps(FILLER)[1:-1])
        f.write('"}\n' + json.dumps(short[1]) + "\n")
    return path


def test_node_admission_streams_a_long_note_into_the_in_memory_cache(tmp_path: Path) -> None:
    """Through the node's own loading (site home, ``[deid]`` of its policy, signed batch):
    the released notes and the cache file are those of the in-memory admission."""
    data, home = tmp_path / "data", tmp_path / "home"
    path = write_site(data, long_text=long_note(6_000) + " Quixote's café")
    with_deid(home, "north", "icd", {"window_chars": WINDOW, "workers": 1})
    client = deployed_node("icd", home, data, site="north")
    assert len(client.site.data.train) == 1 and len(client.site.data.test) == 1  # 1 held back
    (cache,) = (home / "admitted" / "icd").glob("*.jsonl")
    summary = json.loads(cache.with_suffix(".summary.json").read_text())
    assert summary["known_identifier_held"] == 1 and summary["received"] == 3

    other = tmp_path / "other"
    (other / SECRET_RELPATH).parent.mkdir(parents=True)
    (other / SECRET_RELPATH).write_bytes((home / SECRET_RELPATH).read_bytes())
    (other / SECRET_RELPATH).chmod(0o600)
    whole = admitted_site_notes("icd", "north", other, read_site_notes(path, CODE_IDS),
                                DeidConfig(window_chars=WINDOW, workers=1))
    assert whole.cache_file.name == cache.name  # the same key, so the same batch id
    assert whole.cache_file.read_bytes() == cache.read_bytes()
    assert not any((home / SPILL_DIR).iterdir())


def test_node_admission_memory_does_not_grow_with_a_long_note(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The admission ``IcdTask.load_site`` runs on a site's file (``admitted_notes`` over
    ``site_notes``), cache key, gate and cache writing included; its notes are read from the
    cache only when the pack asks."""
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1 << 16)
    config = DeidConfig(window_chars=WINDOW, workers=1)

    def admit(chars: int) -> int:
        folder = tmp_path / str(chars)
        path = write_site(folder / "data", chars=chars)
        read = partial(site_notes, path, CODE_IDS)
        home = site_home(folder)
        peak = peak_bytes(lambda: admitted_notes("icd", "north", home, read, config,
                                                 Planted(config)))
        (cache,) = (home / "admitted" / "icd").glob("*.jsonl")
        assert cache.stat().st_size > 0.9 * chars
        return peak

    admit(5_000)
    small, large = admit(SMALL), admit(LARGE)
    assert large - small < (LARGE - SMALL) / 10, (small, large)
    assert large < LARGE, (small, large)


# ---------------------------------------------------------------- parsers and writers


def chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def resolved(fields: dict) -> dict:
    return {k: "".join(text_pieces(v)) if isinstance(v, SpilledText) else v
            for k, v in fields.items()}


def both_ways(read: Callable[..., list], text: str) -> None:
    """``read(chunks, hold, spill)`` whole and held, and in 3-character chunks with a hold of
    40: the same fields (a field too long to hold aside), or both a DataError — the pieces
    may also refuse a name (key, column) longer than the hold, which the whole read holds."""
    outcomes = []
    with Spill() as spill:
        for parts, hold in (([text], None), (chunks(text, 3), 40)):
            try:
                outcomes.append(read(parts, hold, spill if hold else None))
            except DataError as error:
                outcomes.append(error)
        whole, pieces = outcomes
        if isinstance(whole, DataError) or isinstance(pieces, DataError):
            assert isinstance(pieces, DataError), (whole, pieces)
            assert isinstance(whole, DataError) or "longer than 40 characters" in str(pieces)
            return
        assert len(pieces) == len(whole)
        for got, want in zip(pieces, whole, strict=True):
            assert got[0] == want[0]  # the line
            if got[2] is None:
                assert resolved(got[1]) == want[1]
            else:  # a field longer than the hold: the note's field is still read
                assert resolved(got[1])["text"] == want[1]["text"]


def read_jsonl_text(parts: list[str], hold: int | None, spill: Spill | None) -> list:
    return [(r.line, r.fields, r.problem) for r in jsonl_notes(parts, "f", "text", hold, spill)]


def read_csv_text(parts: list[str], hold: int | None, spill: Spill | None) -> list:
    table = csv_records(parts, "f", "text", hold, spill)
    return [(r.line, r.fields, r.problem) for r in table.records]


JSONL_SEED = "".join(json.dumps(r, ensure_ascii=ascii) + "\n"
                     for r in ({**RECORDS[0], "n": [1.5, {"q": "a\\\"b"}]},
                               {"text": "x" * 70 + "\\u00e9 \"q\" 😀", "z": None},
                               {"text": "y" * 45, "long": "z" * 50})
                     for ascii in (True, False))
CSV_SEED = ('id,text,text\r\n1,"Seen 03/14, ""stable"".\nNo change.",a\n\n  \n2,plain,\n'
            '3,"' + "w" * 60 + '",x"y\n')


@FUZZ
@given(data=mutated_text(JSONL_SEED))
def test_jsonl_read_in_pieces_is_jsonl_read_whole(data: bytes) -> None:
    both_ways(read_jsonl_text, data.decode("utf-8", "replace"))


@FUZZ
@given(data=mutated_text(CSV_SEED))
def test_csv_read_in_pieces_is_csv_read_whole(data: bytes) -> None:
    both_ways(read_csv_text, data.decode("utf-8", "replace"))


def test_the_readers_agree_with_pandas_and_the_writers_with_json_and_pandas() -> None:
    table = csv_records([CSV_SEED], "f", "text")
    frame = pd.read_csv(io.StringIO(CSV_SEED), dtype=str, keep_default_na=False)
    assert table.header == list(frame.columns) == ["id", "text", "text.1"]
    assert [r.fields for r in table.records] == frame.to_dict("records")
    value = 'a "quoted", text\nover lines, café 😀 \\ end' * 5
    with Spill() as spill:
        writer = spill.writer()
        for piece in chunks(value, 7):
            writer.write(piece)
        spilled = writer.close()
        for ascii in (True, False):
            record = {"id": "x", "text": value, "n": [1, None]}
            assert "".join(json_pieces(record, "text", spilled, ascii)) == json.dumps(
                record, ensure_ascii=ascii)
        out = io.StringIO()
        rows = CsvWriter(out, ["id", "text"])
        rows.row(["1", spilled])
        rows.row(["", "plain"])
        assert out.getvalue() == pd.DataFrame({"id": ["1", ""], "text": [value, "plain"]}
                                              ).to_csv(index=False)
