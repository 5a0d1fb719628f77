"""``fedmed deid`` subcommands through register(): corpus, detect, scrub, eval, train."""

from __future__ import annotations

import argparse
import json
import re

import pydicom
import pytest
from pydicom.data import get_testdata_file

from fedmed.deid.cli import register
from fedmed.errors import FedmedError

NOTE = "Patient John Carter, MRN 4455123, seen 03/04/2021 by Dr. Maria Lopez. Tel 617-555-0143."


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="fedmed")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_corpus_detect_eval(tmp_path, capsys) -> None:
    assert run("deid", "corpus", "--out", str(tmp_path / "c"), "--n", "8", "--seed", "5") == 0
    capsys.readouterr()
    note = tmp_path / "note.txt"
    note.write_text(NOTE)
    assert run("deid", "detect", str(note), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["text"] for r in rows} >= {"John Carter", "4455123", "03/04/2021"}
    assert all(r["file"] == str(note) and NOTE[r["start"]:r["end"]] == r["text"] for r in rows)
    assert run("deid", "eval", "--gold", str(tmp_path / "c" / "test"), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["documents"] >= 1 and "HIPAA map" in result["label_map"]
    assert run("deid", "eval", "--gold", str(tmp_path / "c" / "test"), "--engine",
               "presidio") == 0
    assert "token binary" in capsys.readouterr().out


def test_scrub_text_csv_xml_and_dicom(tmp_path) -> None:
    site = tmp_path / "site"
    src = tmp_path / "in"
    src.mkdir()
    (src / "note.txt").write_text(NOTE)
    (src / "notes.csv").write_text(f'patient_id,text\np1,"{NOTE}"\np2,"No PHI here."\n')
    dcm = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dcm.save_as(src / "ct.dcm")
    out = tmp_path / "out"
    assert run("deid", "scrub", str(src), str(out), "--site-home", str(site)) == 0
    scrubbed = (out / "note.txt").read_text()
    # The patient's name is gone from where it stood. Not "no John anywhere": the site's
    # random secret may draw "Johnny" as the surrogate of "John", or "John" as the doctor's.
    assert not re.search(r"\bPatient John\b|\bCarter\b|\b4455123\b", scrubbed)
    assert scrubbed.startswith("Patient ") and "Tel " in scrubbed
    csv = (out / "notes.csv").read_text()
    assert not re.search(r"\bCarter\b", csv) and "No PHI here." in csv
    ct = pydicom.dcmread(out / "ct.dcm")
    assert ct.PatientIdentityRemoved == "YES" and "CompressedSamples" not in str(ct.PatientName)
    # i2b2 in, i2b2 out (surrogate positions as tags), redaction mode
    run("deid", "corpus", "--out", str(tmp_path / "c"), "--n", "3", "--seed", "1")
    xml_in = next((tmp_path / "c" / "test").glob("*.xml"))
    xml_out = tmp_path / "one.xml"
    assert run("deid", "scrub", str(xml_in), str(xml_out), "--site-home", str(site),
               "--mode", "redact") == 0
    assert "<deIdi2b2>" in xml_out.read_text() and "[DATE]" in xml_out.read_text()


def test_errors_are_fedmed_errors(tmp_path) -> None:
    with pytest.raises(FedmedError, match="nope"):
        run("deid", "scrub", str(tmp_path / "nope.txt"), str(tmp_path / "o.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(FedmedError, match="bad.txt"):
        run("deid", "detect", str(bad))
    with pytest.raises(FedmedError):
        run("deid", "train", "--corpus", str(tmp_path), "--out", str(tmp_path / "m"))
