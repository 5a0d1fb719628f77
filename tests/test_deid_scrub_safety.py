"""``fedmed deid scrub`` is all or nothing and never in place; binary input is refused (issue 14).

Each test runs the real CLI (``fedmed.cli.main``) on the inputs a careless operator or a
broken export produces, and failed on the code before the fix: the note overwritten by
``scrub same.txt same.txt``, earlier files written before a bad one stopped a folder, a
quarantined file reported as "scrubbed 1 file(s)", a file of NUL bytes read as text (~100
bogus IPADDR spans).
"""

from __future__ import annotations

import json

import pytest

from fedmed.cli import main

NOTE = "Patient John Carter, MRN 4455123, seen 03/04/2021 by Dr. Maria Lopez. Tel 617-555-0143."


def scrub(tmp_path, *argv: str) -> int:
    return main(["deid", "scrub", *argv, "--site-home", str(tmp_path / "site")])


def one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedmed: error: "), err
    assert all(name in err for name in names), err
    return err


def test_output_equal_to_input_is_refused_and_the_note_kept(tmp_path, capsys) -> None:
    note = tmp_path / "same.txt"
    note.write_text(NOTE)
    assert scrub(tmp_path, str(note), str(note)) == 2
    assert "never writes in place" in one_error_line(capsys, str(note))
    assert note.read_text() == NOTE
    link = tmp_path / "link.txt"
    link.symlink_to(note)
    assert scrub(tmp_path, str(note), str(link)) == 2
    one_error_line(capsys, str(link))
    assert note.read_text() == NOTE


def test_output_folder_inside_the_input_folder_is_refused(tmp_path, capsys) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "a.txt").write_text(NOTE)
    for out in (src, src / "scrubbed"):
        assert scrub(tmp_path, str(src), str(out)) == 2
        one_error_line(capsys, str(out))
    assert sorted(p.name for p in src.iterdir()) == ["a.txt"]
    assert (src / "a.txt").read_text() == NOTE


def test_a_bad_file_in_a_folder_leaves_nothing_written(tmp_path, capsys) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "a_good.txt").write_text(NOTE)
    (src / "z_bad.txt").write_bytes(b"caf\xe9 latin-1 text")
    out = tmp_path / "out"
    assert scrub(tmp_path, str(src), str(out)) == 2
    one_error_line(capsys, "z_bad.txt", "not UTF-8")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "site"]  # no staging left


def test_quarantined_files_are_counted_apart_and_listed_in_the_manifest(tmp_path,
                                                                          capsys) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "a.txt").write_text(NOTE)
    (src / "b.txt").write_text("Seen today." + "\x01" * 20)  # control characters
    (src / "c.csv").write_text(f'patient_id,text\np1,"{NOTE}"\np2,"   "\n')
    out = tmp_path / "out"
    assert scrub(tmp_path, str(src), str(out)) == 2
    err = capsys.readouterr().err
    assert "scrubbed 1 file(s), quarantined 1 file(s), partly quarantined 1 file(s)" in err
    assert "2 item(s) quarantined" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "c.csv"]
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert manifest["files"] == {"scrubbed": 1, "quarantined": 1, "partly quarantined": 1}
    entries = {e["input"]: e for e in manifest["entries"]}
    assert entries["a.txt"]["outcome"] == "scrubbed" and entries["a.txt"]["written"]
    assert entries["b.txt"] == {"input": "b.txt", "outcome": "quarantined", "written": False,
                                "items_released": 0, "items_quarantined": 1,
                                "reasons": ["binary content (NUL or control characters)"]}
    assert entries["c.csv"]["outcome"] == "partly quarantined"
    assert entries["c.csv"]["reasons"] == ["empty note"]
    assert "Carter" not in (out / "a.txt").read_text()
    # an existing output folder is updated only once the whole run succeeded
    (src / "d.txt").write_bytes(b"\x00\x00\x00")
    assert scrub(tmp_path, str(src), str(out)) == 2
    one_error_line(capsys, "d.txt", "binary")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "c.csv"]


@pytest.mark.parametrize("command", ["detect", "scrub"])
def test_nul_bytes_are_refused_as_binary(tmp_path, capsys, command) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00" * 4096)
    argv = [str(blob)] + ([str(tmp_path / "out.txt")] if command == "scrub" else [])
    code = (scrub(tmp_path, *argv) if command == "scrub"
            else main(["deid", "detect", *argv]))
    assert code == 2
    assert "binary file (NUL byte at offset 0)" in one_error_line(capsys, str(blob))
    assert not (tmp_path / "out.txt").exists()
