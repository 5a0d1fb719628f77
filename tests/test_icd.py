"""The ``icd`` pack: raw notes with PHI → de-id gate → hashed tokens → CAML-style model."""

from __future__ import annotations

import json
import re
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator

from fedmed.data.icd_synth import CODE_IDS, CODES, SITES, generate_note, site_notes
from fedmed.data.text_admission import KNOWN_IDENTIFIER_REASON, admitted_site_notes
from fedmed.deid.gate import Gate
from fedmed.deid.phi import Document
from fedmed.errors import ConfigError, DataError
from fedmed.explain.text_evidence import evidence_records, write_evidence
from fedmed.state import state_root
from fedmed.tasks import get_task, task_names
from fedmed.tasks.icd import IcdTask, admit_site, default_site_home
from fedmed.tasks.icd_encoding import MAX_TOKENS, NotesDataset, encode, tokenize
from fedmed.tasks.icd_model import CamlNet, coding_scores
from fedmed.training.loop import TrainSettings, train_round

CPU = torch.device("cpu")
SITE = "rural"


@pytest.fixture(scope="module")
def pack() -> IcdTask:
    task = get_task("icd")
    assert isinstance(task, IcdTask)
    return task


@pytest.fixture(scope="module")
def site_home(
    tmp_path_factory: pytest.TempPathFactory, seeded_gate_home: Callable[[Path], Path]
) -> Path:
    return seeded_gate_home(tmp_path_factory.mktemp("icd-home"))


@pytest.fixture(scope="module")
def rural(pack: IcdTask, site_home: Path):
    """One site through the real gate (the slow step: done once for the module)."""
    return pack.load_builtin_site(SITE, site_home)


@pytest.fixture(scope="module")
def raw_rural() -> list[Document]:
    return site_notes(SITE, 120, 0, "train") + site_notes(SITE, 40, 0, "test")


@pytest.fixture(scope="module")
def trained(pack: IcdTask, rural) -> tuple[CamlNet, dict[str, float], dict[str, float]]:
    torch.manual_seed(0)
    model = pack.build_model()
    before = pack.evaluate(model, rural.test, CPU)
    train_round(pack, model, rural.train, TrainSettings(30, 16, pack.default_lr, seed=0), CPU)
    return model, before, pack.evaluate(model, rural.test, CPU)


# --- synthetic notes -------------------------------------------------------------------------


def test_generator_is_deterministic_and_the_test_split_ignores_the_seed() -> None:
    first = site_notes("academic", 6, seed=3, split="train")
    assert [d.text for d in first] == [d.text for d in site_notes("academic", 6, 3, "train")]
    assert [d.text for d in first[:4]] == [d.text for d in site_notes("academic", 4, 3, "train")]
    assert [d.text for d in first] != [d.text for d in site_notes("academic", 6, 4, "train")]
    test_a, test_b = site_notes("academic", 5, 3, "test"), site_notes("academic", 5, 99, "test")
    assert [d.text for d in test_a] == [d.text for d in test_b]
    assert generate_note("rural", 0, "train", 0).text != generate_note("veterans", 0, "train",
                                                                       0).text


def test_codes_are_multi_label_and_long_tailed() -> None:
    counts: Counter[str] = Counter()
    per_note = []
    for site in SITES:
        for doc in site_notes(site, 100, 0, "train"):
            counts.update(doc.meta["labels"])
            per_note.append(len(doc.meta["labels"]))
    assert set(counts) == set(CODE_IDS) and len(CODE_IDS) == 26
    assert 2.0 <= sum(per_note) / len(per_note) <= 4.0 and min(per_note) >= 1
    frequencies = sorted(counts.values(), reverse=True)
    assert frequencies[0] >= 10 * frequencies[-1]  # a long tail, not a uniform draw


def test_negated_and_family_mentions_do_not_imply_codes() -> None:
    by_id = {c.code: c for c in CODES}
    for site, style in SITES.items():
        cues = [n.split("{}") for n in style.negations] + [["with ", "."]]
        for doc in site_notes(site, 40, 0, "train"):
            assert doc.meta["negated"], doc.doc_id
            assert not set(doc.meta["negated"]) & set(doc.meta["labels"])
            low = doc.text.lower()
            for code in doc.meta["negated"]:
                phrases = by_id[code].terms + by_id[code].abbreviations
                # the code is named in the note, but only behind a negation or family cue
                assert any(f"{pre}{p}{post}".lower() in low
                           for pre, post in cues for p in phrases), (doc.doc_id, code)


def test_sites_write_in_their_own_dialect() -> None:
    for site, style in SITES.items():
        text = generate_note(site, 0, "train", 1).text
        for header in style.headers:
            expected = header.upper() if style.upper_headers else header
            assert f"\n{expected}:\n" in text, (site, header)
    assert len({style.headers for style in SITES.values()}) == len(SITES)


def test_raw_notes_hold_phi_with_exact_gold_spans(raw_rural: list[Document]) -> None:
    for doc in raw_rural[:30]:
        assert not doc.check_offsets()
        types = {s.type for s in doc.spans}
        assert {"PATIENT", "MEDICALRECORD", "DATE", "PHONE", "DOCTOR"} <= types
        first, last, mrn = doc.meta["identifiers"]
        assert last in doc.text and mrn in doc.text


# --- admission through the gate --------------------------------------------------------------


def test_pack_sees_only_released_text_without_patient_names_or_mrns(
    rural, raw_rural: list[Document], site_home: Path
) -> None:
    texts = rural.train.texts + rural.test.texts
    assert len(texts) >= 150  # few notes are quarantined
    raw_texts = {doc.text for doc in raw_rural}
    assert not raw_texts & set(texts)  # every note was rewritten by the gate
    released = "\n".join(texts)
    gate = Gate(site_home)
    by_id = dict(zip(rural.train.note_ids + rural.test.note_ids, texts, strict=True))
    for doc in raw_rural:
        first, last, mrn = doc.meta["identifiers"]
        assert not _stands(mrn, released), doc.doc_id  # no patient's MRN in any released note
        # nor a name in the patient's own note, not even one part alone ("Mrs. Fuller");
        # as whole words: another note's surrogate may contain it ("BELTRAN, SCOTT" ⊃ "TRAN")
        text = by_id.get(gate.pseudonym("doc", doc.doc_id))
        for name in (f"{first} {last}", f"{last}, {first}", last, first):
            assert text is None or not _stands(name, text), doc.doc_id


def _stands(value: str, text: str) -> bool:
    """Whether ``value`` stands in ``text`` as whole words, in any case."""
    return re.search(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.IGNORECASE) is not None


def test_admission_is_cached_private_and_reused(rural, site_home: Path,
                                                raw_rural: list[Document]) -> None:
    folder = site_home / "admitted" / "icd"
    (notes_file,) = folder.glob("*.jsonl")
    assert stat.S_IMODE(notes_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    again = admit_site(SITE, site_home)
    assert again.from_cache and again.cache_file == notes_file
    assert [n.text for n in again.split("train")] == rural.train.texts
    summary = json.loads(notes_file.with_suffix(".summary.json").read_text())
    assert summary["received"] == 160 == len(again.notes) + again.quarantined
    cached = notes_file.read_text()
    assert not any(doc.meta["identifiers"][2] in cached for doc in raw_rural)
    assert (site_home / "deid" / "reports").is_dir()  # the gate's batch report is at the site


class NoDetector:
    """Finds nothing: only the residual check and the known-identifier check act."""

    versions = {"engine": "none"}

    def detect_batch(self, texts: list[str]) -> list[list]:
        return [[] for _ in texts]


def test_quarantined_notes_do_not_shift_labels(tmp_path: Path) -> None:
    raw = []
    for i in range(12):
        text = f"Note {i} about condition{i}."
        if i % 4 == 1:
            text += " SSN 123-45-6789 on file."  # the residual check quarantines these
        identifiers = ["Quackenbush"] if i == 6 else []
        if i == 6:
            text += " Seen with Mr. Quackenbush."  # the registry's name, missed by detection
        raw.append(Document(f"n{i}", text, meta={"labels": [f"C{i}"], "identifiers": identifiers,
                                                  "split": "test" if i > 9 else "train"}))
    admission = admitted_site_notes("icd", "x", tmp_path, raw, detector=NoDetector())
    assert admission.quarantined == 4 and len(admission.notes) == 8
    assert admission.summary["gate_quarantined"] == 3
    assert admission.summary["known_identifier_held"] == 1
    assert KNOWN_IDENTIFIER_REASON in {q["reason"] for q in admission.summary["quarantine"]}
    for note in admission.notes:
        number = re.search(r"condition(\d+)", note.text).group(1)
        assert note.labels == (f"C{number}",)
        assert note.split == ("test" if int(number) > 9 else "train")
    assert all("Quackenbush" not in n.text for n in admission.notes)
    assert list((tmp_path / "quarantine").glob("*-known-*.reason.json"))


def test_admission_rejects_unalignable_input(tmp_path: Path) -> None:
    twice = [Document("a", "x", meta={"labels": []}), Document("a", "y", meta={"labels": []})]
    with pytest.raises(DataError, match="twice"):
        admitted_site_notes("icd", "x", tmp_path, twice, detector=NoDetector())
    with pytest.raises(DataError, match="labels"):
        admitted_site_notes("icd", "x", tmp_path, [Document("a", "x")], detector=NoDetector())


def test_default_site_home_is_not_a_node_site_home() -> None:
    # The node creates <state>/sites/<federation>/<site> whole and refuses a half-made one.
    home = default_site_home(SITE)
    assert home.is_relative_to(state_root()) and not home.is_relative_to(state_root() / "sites")
    with pytest.raises(ConfigError, match="unknown icd site"):
        admit_site("nowhere", home)


# --- tokenizer, model, metrics ---------------------------------------------------------------


def test_hashed_tokens_need_no_shared_vocabulary() -> None:
    ids = encode(["HTN, T2DM; MRN 1234567", "htn t2dm mrn 7654321"])
    assert ids.shape == (2, MAX_TOKENS) and ids.dtype == torch.int64
    assert torch.equal(ids[0], ids[1])  # case and digit values fold away
    assert int(ids[0, :4].min()) >= 1 and int(ids[0, 4:].max()) == 0


def test_a_long_note_is_tokenised_only_as_far_as_the_model_reads() -> None:
    """A released note can be megabytes long; its encoding lists MAX_TOKENS tokens, not all."""
    words = ["htn", "t2dm", "copd", "afib"]
    note = " ".join(words[i % 4] for i in range(200_000))  # ~1 MB, 200,000 tokens
    assert len(tokenize(note, MAX_TOKENS)) == MAX_TOKENS
    assert tokenize(note, 3) == [("htn", 0, 3), ("t0dm", 4, 8), ("copd", 9, 13)]
    assert torch.equal(encode([note])[0], encode([note[:2000]])[0])  # the same first tokens


def test_model_shapes_and_dp_compatibility(pack: IcdTask, rural) -> None:
    model = pack.build_model()
    inputs, targets = rural.train[0]
    assert inputs.shape == (MAX_TOKENS,) and targets.shape == (len(CODE_IDS),)
    batch = rural.train.inputs[:3]
    assert model(batch).shape == (3, len(CODE_IDS))
    assert ModuleValidator.validate(model, strict=True) == []
    # Without dropout, per-example gradients must equal single-example backprops.
    model = CamlNet(dropout=0.0)
    wrapped = GradSampleModule(model)
    pack.loss(wrapped(batch), rural.train.targets[:3]).backward()
    sampled = model.embedding.weight.grad_sample
    assert sampled.shape == (3, *model.embedding.weight.shape)
    single = CamlNet(dropout=0.0)
    single.load_state_dict(model.state_dict())
    pack.loss(single(batch[1:2]), rural.train.targets[1:2]).backward()  # Opacus undoes the mean
    torch.testing.assert_close(sampled[1], single.embedding.weight.grad, rtol=1e-4, atol=1e-6)


def test_coding_scores_on_known_predictions() -> None:
    targets = torch.tensor([[1.0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0]])
    perfect = (targets * 2 - 1) * 5
    assert coding_scores(perfect, targets) == {"micro_f1": 1.0, "macro_f1": 1.0,
                                               "precision_at_5": pytest.approx(0.3)}
    silent = torch.full_like(targets, -5.0)
    assert coding_scores(silent, targets)["micro_f1"] == 0.0


def test_local_training_improves_micro_f1(pack: IcdTask, trained) -> None:
    _, before, after = trained
    assert set(after) == set(pack.metrics) and pack.primary_metric == "micro_f1"
    assert after["micro_f1"] >= before["micro_f1"] + 0.3
    assert after["precision_at_5"] > before["precision_at_5"]


def test_evidence_spans_are_substrings_of_the_released_text(rural, trained,
                                                            tmp_path: Path) -> None:
    model = trained[0]
    explained = 0
    for text in rural.test.texts[:10]:
        for item in model.evidence(text, top_k=3):
            assert item.code in CODE_IDS and item.probability >= 0.5 and item.description
            assert 1 <= len(item.spans) <= 3
            for span in item.spans:
                assert text[span.start:span.end] == span.text and span.text.strip()
            explained += 1
    assert explained >= 10
    path, _ = write_evidence(evidence_records(model, rural.test, n=3), tmp_path, SITE)
    records = json.loads(path.read_text())
    assert len(records) == 3 and all("predicted" in r for r in records)


def test_pack_is_registered(pack: IcdTask) -> None:
    assert "icd" in task_names()
    assert pack.site_names() == list(SITES)
    assert isinstance(NotesDataset([]), NotesDataset)
