"""The shipped BiLSTM-CRF: loads offline, small, windows long notes, recall on unseen templates."""

from __future__ import annotations

import socket

import pytest

from fedmed.deid.corpus import generate
from fedmed.deid.evaluate import score
from fedmed.deid.phi import Span
from fedmed.deid.taggers import DEFAULT_CHECKPOINT, load_tagger
from fedmed.deid.tokens import bio_labels, decode, tokenize, windows

# Stated in docs/deid.md: on freshly generated test-split notes (templates never seen in
# training) the shipped tagger alone keeps binary token recall above this.
TAGGER_MIN_RECALL = 0.97


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tokens_bio_round_trip_and_windows() -> None:
    text = "Pt John\nSmith, MRN:4455123, 78yo."
    spans = [Span(3, 13, "PATIENT"), Span(19, 26, "MEDICALRECORD"), Span(28, 30, "AGE")]
    toks = tokenize(text)
    labels = bio_labels(toks, spans)
    assert [(s.start, s.end, s.type) for s in decode(toks, labels)] == \
        [(s.start, s.end, s.type) for s in spans]
    wins = windows(1000, 256, 64)
    covered = {i for a, b in wins for i in range(a, b)}
    assert covered == set(range(1000)) and max(b - a for a, b in wins) <= 256


def test_shipped_checkpoint_is_small_and_loads_offline(no_network) -> None:
    size = DEFAULT_CHECKPOINT.stat().st_size + \
        DEFAULT_CHECKPOINT.with_name("bilstm_crf.vocab.json").stat().st_size
    assert size < 5 * 1024 * 1024
    tagger = load_tagger()
    assert tagger.name == "bilstm-crf" and tagger.version.startswith("bilstm_crf.pt@")
    spans = tagger.predict(["Seen by Dr. Maria Lopez on 03/04/2019, MRN 4455123."])[0]
    assert {"DOCTOR", "DATE", "MEDICALRECORD"} <= {s.type for s in spans}


def test_recall_on_fresh_unseen_template_notes() -> None:
    docs = generate(40, seed=777, split="test")
    result = score(docs, load_tagger().predict([d.text for d in docs]))
    assert result["token"]["binary"]["recall"] >= TAGGER_MIN_RECALL, result["token"]
    assert result["token"]["binary"]["precision"] >= 0.9


def test_long_note_is_covered_to_the_end() -> None:
    docs = generate(12, seed=778, split="test")
    text = "\n\n".join(d.text for d in docs)
    assert len(tokenize(text)) > 3 * 256
    spans = load_tagger().predict([text])[0]
    last_gold_start = text.rindex(docs[-1].text)
    assert any(s.start >= last_gold_start for s in spans)
    assert all(0 <= s.start < s.end <= len(text) for s in spans)


# All-caps notes where the tagger found one word of the patient's name and gave the other
# a probability under its threshold (casing no longer tells names from other words):
# seed 2024 is the published corpus (test-00126: "FOR MORGAN MCBRIDE, LOCAL MRN ..."),
# seed 99 a fresh one from the same test templates.
ALL_CAPS_NAME_NOTES = [(2024, 126), (99, 61), (99, 74), (99, 545)]


def test_all_caps_patient_names_are_found_whole() -> None:
    from fedmed.deid.corpus import generate_note
    from fedmed.deid.evaluate import leaked

    docs = [generate_note(seed, "test", index) for seed, index in ALL_CAPS_NAME_NOTES]
    # and two whole notes upper-cased (same offsets), in which names leaked before
    for doc in (generate_note(777, "test", 75), generate_note(777, "test", 114)):
        assert len(doc.text.upper()) == len(doc.text)
        docs.append(type(doc)(doc.doc_id, doc.text.upper(), doc.spans, doc.meta))
    assert all(d.text.isupper() for d in docs)
    for doc, spans in zip(docs, load_tagger().predict([d.text for d in docs]), strict=True):
        names = [g for g in doc.spans if g.type == "PATIENT"]
        assert names
        for gold in names:
            assert not leaked(gold, doc.text, spans), (doc.doc_id, doc.text[gold.start:gold.end])
    text = docs[0].text
    assert "MORGAN MCBRIDE" in {text[s.start:s.end].split(",")[0] for s in
                                load_tagger().predict([text])[0] if s.type == "PATIENT"}
