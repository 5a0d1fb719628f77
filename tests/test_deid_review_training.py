"""``fedmed deid train --from-review``: the site's tagger fine-tuned on corrected review files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmed.cli import main
from fedmed.deid.bilstm_crf import BiLstmCrfTagger
from fedmed.deid.io import read_i2b2, write_i2b2
from fedmed.deid.phi import Document
from fedmed.deid.realistic_notes import generate
from fedmed.deid.selection import dev_score
from fedmed.deid.taggers import DEFAULT_CHECKPOINT


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Document]]:
    """A review folder whose XML files an annotator corrected (the gold spans written back),
    one of them deleted (not reviewed)."""
    root = tmp_path_factory.mktemp("review")
    notes = root / "notes"
    notes.mkdir()
    gold = {doc.doc_id: doc for doc, _terms in generate(5, seed=7)}
    for doc in gold.values():
        (notes / f"{doc.doc_id}.txt").write_text(doc.text)
    out = root / "pages"
    assert main(["deid", "review", str(notes), "--out", str(out), "--top", "5",
                 "--engine", "tagger"]) == 0
    rows = json.loads((out / "index.json").read_text())
    for row in rows:
        right = gold[Path(str(row["doc_id"])).stem]
        write_i2b2(out / row["xml"], Document(str(row["doc_id"]), right.text, right.spans))
    (out / rows[-1]["xml"]).unlink()  # the annotator did not get to this one
    return out, [read_i2b2(out / r["xml"]) for r in rows[:-1]]


def test_the_tagger_fine_tuned_on_corrections_fits_them_better(
    reviewed: tuple[Path, list[Document]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, docs = reviewed
    out = tmp_path / "site-home" / "deid-tagger"
    capsys.readouterr()
    assert main(["deid", "train", "--from-review", str(folder), "--out", str(out),
                 "--epochs", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    tuned = BiLstmCrfTagger.load(out / "bilstm_crf.pt")
    base = BiLstmCrfTagger.load(DEFAULT_CHECKPOINT)
    assert summary["path"] == str(out / "bilstm_crf.pt")
    assert tuned.metrics["fine_tuned"]["reviewed_notes"] == len(docs) == 4
    assert tuned.threshold == base.threshold  # kept: too few notes to choose one on
    before = dev_score(base, docs)["token"]["binary"]["f1"]
    after = dev_score(tuned, docs)["token"]["binary"]["f1"]
    assert after > before


def test_a_folder_not_written_by_review_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deid", "train", "--from-review", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "fedmed deid review" in err


def test_base_without_from_review_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deid", "train", "--corpus", str(tmp_path), "--base", "x.pt", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--base is for --from-review" in capsys.readouterr().err
