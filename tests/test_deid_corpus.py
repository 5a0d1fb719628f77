"""Synthetic corpus: determinism, exact gold offsets, template split, i2b2 XML round trip."""

from __future__ import annotations

import json

from fedmed.deid import dates
from fedmed.deid.corpus import generate, split_sizes, write_corpus
from fedmed.deid.io import i2b2_xml, parse_i2b2, read_i2b2_dir
from fedmed.deid.phi import SUBTYPES, Document, Span
from fedmed.deid.templates import TEMPLATES, split_of, templates_for


def test_generation_is_deterministic_and_prefix_stable() -> None:
    a = generate(12, seed=3, split="train")
    b = generate(12, seed=3, split="train")
    c = generate(5, seed=3, split="train")
    assert [(d.text, d.spans) for d in a] == [(d.text, d.spans) for d in b]
    assert [d.text for d in a[:5]] == [d.text for d in c]
    assert a[0].text != generate(1, seed=4, split="train")[0].text


def test_gold_offsets_are_exact_and_typed() -> None:
    for split in ("train", "dev", "test"):
        for doc in generate(60, seed=1, split=split):
            assert not doc.check_offsets()
            for s in doc.spans:
                assert doc.text[s.start:s.end].strip() == doc.text[s.start:s.end]
                assert s.type in SUBTYPES


def test_split_is_by_template_and_covers_every_subtype() -> None:
    names = {s: {t.name for t in templates_for(s)} for s in ("train", "dev", "test")}
    assert not names["train"] & names["test"] and not names["dev"] & names["test"]
    assert not names["train"] & names["dev"]
    assert sum(len(v) for v in names.values()) == len(TEMPLATES)
    for doc in generate(40, seed=2, split="test"):
        assert doc.meta["template"] in names["test"]
    for split in ("train", "test"):
        seen = {s.type for d in generate(300, seed=5, split=split) for s in d.spans}
        assert seen == set(SUBTYPES), (split, set(SUBTYPES) - seen)
    assert {split_of(t) for t in TEMPLATES} == {"train", "dev", "test"}


def test_noise_is_present() -> None:
    docs = generate(300, seed=9, split="train")
    texts = "\n".join(d.text for d in docs)
    assert any("\n" in d.text[s.start:s.end] for d in docs for s in d.spans)  # broken names
    assert any(d.text[s.start:s.end].isupper() and s.type == "PATIENT"
               for d in docs for s in d.spans)
    ages = [int(d.text[s.start:s.end]) for d in docs for s in d.spans
            if s.type == "AGE" and d.text[s.start:s.end].isdigit()]
    assert max(ages) > 89
    assert "|" in texts and "\n- " in texts or "\n1. " in texts  # tables and lists


def test_every_generated_date_is_understood_by_the_shifter() -> None:
    for doc in generate(200, seed=11, split="train"):
        for s in doc.spans:
            if s.type == "DATE":
                assert dates.parse(doc.text[s.start:s.end]) is not None, doc.text[s.start:s.end]


def test_i2b2_xml_round_trip_keeps_text_and_spans() -> None:
    doc = Document("odd", 'A "quoted" <tag> & ]]> Name\nBroken here', [
        Span(24, 39, "PATIENT"), Span(0, 1, "AGE")])
    back = parse_i2b2(i2b2_xml(doc), "odd.xml")
    assert back.text == doc.text and back.spans == sorted(doc.spans)
    for d in generate(30, seed=7, split="dev"):
        back = parse_i2b2(i2b2_xml(d), f"{d.doc_id}.xml")
        assert (back.text, back.spans) == (d.text, sorted(d.spans))


def test_write_corpus_writes_splits_and_manifest(tmp_path) -> None:
    sizes = write_corpus(tmp_path, 20, seed=1)
    assert sizes == split_sizes(20) and sum(sizes.values()) == 20
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["seed"] == 1 and set(manifest["templates"]) == {"train", "dev", "test"}
    docs = read_i2b2_dir(tmp_path / "test")
    assert len(docs) == sizes["test"] and all(d.spans for d in docs)
