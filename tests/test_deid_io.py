"""Readers refuse bad input with a DataError that names the file."""

from __future__ import annotations

import pytest

from fedmed.deid.io import read_csv, read_i2b2, read_jsonl, read_notes, read_text
from fedmed.errors import DataError


def _raises_naming(path, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(path, *args, **kwargs)
    assert str(path) in str(info.value)
    return str(info.value)


def test_missing_empty_non_utf8_and_huge_files(tmp_path) -> None:
    _raises_naming(tmp_path / "nope.txt", read_text)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in _raises_naming(empty, read_text)
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n ")
    _raises_naming(blank, read_text)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Patient Müller".encode("latin-1"))
    assert "UTF-8" in _raises_naming(latin, read_text)
    big = tmp_path / "big.txt"
    big.write_text("x" * 2000)
    assert "limit" in _raises_naming(big, read_text, max_bytes=1000)


def test_malformed_i2b2_xml(tmp_path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<deIdi2b2><TEXT>unclosed")
    assert "malformed" in _raises_naming(bad, read_i2b2)
    wrong = tmp_path / "wrong.xml"
    wrong.write_text('<deIdi2b2><TEXT><![CDATA[John]]></TEXT><TAGS>'
                     '<NAME id="P0" start="0" end="4" text="Jack" TYPE="PATIENT"/></TAGS>'
                     '</deIdi2b2>')
    _raises_naming(wrong, read_i2b2)
    unknown = tmp_path / "unknown.xml"
    unknown.write_text('<deIdi2b2><TEXT><![CDATA[John]]></TEXT><TAGS>'
                       '<NAME id="P0" start="0" end="4" text="John" TYPE="NICKNAME"/></TAGS>'
                       '</deIdi2b2>')
    _raises_naming(unknown, read_i2b2)


def test_csv_and_jsonl(tmp_path) -> None:
    csv = tmp_path / "notes.csv"
    csv.write_text('patient_id,text\np1,"Seen by Dr. Who"\np2,"MRN 1234567"\n')
    assert list(read_csv(csv, "text")["patient_id"]) == ["p1", "p2"]
    _raises_naming(csv, read_csv, "note")
    docs = read_notes(csv, column="text")
    assert [d.meta["patient_id"] for d in docs] == ["p1", "p2"]
    jl = tmp_path / "notes.jsonl"
    jl.write_text('{"text": "a", "patient_id": "p9"}\n\n{"text": "b"}\n')
    assert [r["text"] for r in read_jsonl(jl)] == ["a", "b"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    assert "line 2" in _raises_naming(bad, read_jsonl)
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "a"}\n')
    _raises_naming(nofield, read_jsonl)
