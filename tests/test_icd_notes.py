"""A hospital's own coded notes for the ICD pack (``<data_dir>/<site>/notes.jsonl``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fedmed.data.icd_export import export_sites, main
from fedmed.data.icd_notes import NOTES_FILE, read_site_notes
from fedmed.data.icd_synth import CODE_IDS, builtin_site_notes
from fedmed.data.site_folders import site_folders
from fedmed.errors import DataError
from fedmed.tasks import get_task

GOOD = {"id": "n1", "text": "Pt with HTN.", "codes": ["I10"], "split": "train"}


def _write(folder: Path, *records: object) -> Path:
    path = folder / "north" / NOTES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_an_exported_site_reads_back_as_the_builtin_notes(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--train-notes", "7", "--test-notes", "3",
                 "--sites", "rural,academic"]) == 0  # fmt: skip
    path = tmp_path / "rural" / NOTES_FILE
    assert path.stat().st_mode & 0o777 == 0o600  # raw notes: private like the gate's files
    assert site_folders(tmp_path, NOTES_FILE) == ["academic", "rural"]
    notes = read_site_notes(path, CODE_IDS)
    builtin = builtin_site_notes("rural", 7, 3)
    assert [(n.doc_id, n.text, n.meta["labels"], n.meta["split"]) for n in notes] == [
        (b.doc_id, b.text, b.meta["labels"], b.meta["split"]) for b in builtin
    ]
    assert notes[0].meta["identifiers"] == builtin[0].meta["identifiers"]
    assert notes[0].spans == []  # a hospital's export has no gold PHI spans


def test_the_pack_trains_on_a_sites_own_notes_after_its_gate(
    tmp_path: Path, isolated_state: Path
) -> None:
    export_sites(tmp_path / "data", ["rural"], 12, 4)
    pack = get_task("icd")
    assert pack.site_names(tmp_path / "data") == ["rural"]
    data = pack.load_site("rural", tmp_path / "data", seed=0)
    raw = {n.text for n in builtin_site_notes("rural", 12, 4)}
    assert 0 < len(data.train) <= 12 and 0 < len(data.test) <= 4
    assert not raw & set(data.train.texts + data.test.texts)  # only released text inside
    assert list((isolated_state / "gate" / "icd" / "rural" / "admitted").rglob("*.jsonl"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "notes.jsonl:2: not a JSON object"),
        ({**GOOD, "id": ""}, "notes.jsonl:2: 'id' must be a non-empty string"),
        ({**GOOD, "id": "n1"}, "notes.jsonl:2: note id 'n1' occurs twice"),
        ({**GOOD, "id": "n2", "text": " "}, "note 'n2' has no 'text'"),
        ({**GOOD, "id": "n2", "codes": "I10"}, "'codes' must be a list of strings"),
        ({**GOOD, "id": "n2", "codes": ["Z99.9"]}, "codes outside the federation's list: Z99.9"),
        ({**GOOD, "id": "n2", "split": "val"}, "'split' must be 'train' or 'test', got 'val'"),
        ({**GOOD, "id": "n2", "identifiers": "Smith"}, "'identifiers' must be a list of strings"),
    ],
)
def test_a_bad_line_is_named_with_its_file_and_number(
    tmp_path: Path, line: object, message: str
) -> None:
    path = _write(tmp_path, GOOD, line, {**GOOD, "id": "t1", "split": "test"})
    with pytest.raises(DataError, match=re.escape(message)) as caught:
        read_site_notes(path, CODE_IDS)
    assert str(path) in str(caught.value)


def test_a_site_without_test_notes_or_a_folder_without_sites_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    with pytest.raises(DataError, match="no test notes"):
        read_site_notes(path, CODE_IDS)
    with pytest.raises(DataError, match="no site folders containing notes.jsonl"):
        site_folders(tmp_path / "north", NOTES_FILE)
    with pytest.raises(DataError, match="data folder not found"):
        site_folders(tmp_path / "absent", NOTES_FILE)
    with pytest.raises(DataError, match=r"south/notes\.jsonl: not found"):
        get_task("icd").load_site("south", tmp_path, seed=0)
