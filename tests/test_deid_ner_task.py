"""The ``deid-ner`` pack: deid's BiLSTM-CRF trained as a federated task on per-site notes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader
from torchcrf import CRF

from fedmed.cli import main
from fedmed.data.deid_ner_synth import SITES, replace_spans, site_note, site_notes
from fedmed.deid.bilstm_crf import MAX_CHARS, BiLstmCrfTagger
from fedmed.deid.io import write_i2b2
from fedmed.deid.phi import Document, Span
from fedmed.deid.tokens import LABELS, tokenize
from fedmed.errors import ConfigError, DataError
from fedmed.tasks import get_task, task_names
from fedmed.tasks.deid_ner import (
    FEATURES,
    IGNORE,
    WINDOW,
    DeidNerTask,
    DPBiLstmCrf,
    NoteWindows,
    as_tagger,
    crf_nll,
    export_tagger,
    model_config,
    public_texts,
    shared_vocab,
    unpack,
)
from fedmed.training.loop import TrainSettings, train_round

CPU = torch.device("cpu")
SITE = "rural"  # the smallest built-in site: fastest to train


@pytest.fixture(scope="module")
def pack() -> DeidNerTask:
    task = get_task("deid-ner")
    assert isinstance(task, DeidNerTask)
    return task


@pytest.fixture(scope="module")
def rural(pack: DeidNerTask):
    return pack.load_site(SITE, None, seed=0)


def exact_model() -> DPBiLstmCrf:
    """No dropout of any kind: forward passes are deterministic, gradients comparable."""
    torch.manual_seed(0)
    cfg = model_config()
    cfg.dropout = 0.0
    return DPBiLstmCrf(cfg, word_dropout=0.0)


# --- per-site notes ---------------------------------------------------------------------------


def test_notes_are_deterministic_and_the_test_split_ignores_the_seed() -> None:
    first = site_notes("academic", 4, seed=3, split="train")
    assert [d.text for d in first] == [d.text for d in site_notes("academic", 4, 3, "train")]
    assert [d.text for d in first[:2]] == [d.text for d in site_notes("academic", 2, 3, "train")]
    assert [d.text for d in first] != [d.text for d in site_notes("academic", 4, 4, "train")]
    assert site_note("academic", 0, "test", 1).text == site_note("academic", 0, "test", 1).text
    assert site_note("academic", 0, "test", 1).text != site_note("academic", 0, "train", 1).text


def test_gold_spans_stay_exact_after_restyling() -> None:
    for site in SITES:
        for doc in site_notes(site, 8, 0, "train"):
            assert not doc.check_offsets(), (site, doc.doc_id)
            assert doc.spans and all(doc.text[s.start:s.end].strip() for s in doc.spans)
    doc = Document("x", "Pt John Smith, MRN 123.", [Span(3, 13, "PATIENT"), Span(19, 22, "ID")])
    out = replace_spans(doc, lambda subtype, text: "Ana" if subtype == "PATIENT" else "ABC-9")
    assert out.text == "Pt Ana, MRN ABC-9." and not doc.spans[0].overlaps(doc.spans[1])
    assert [out.text[s.start:s.end] for s in out.spans] == ["Ana", "ABC-9"]


def test_sites_write_phi_in_their_own_styles() -> None:
    values: dict[str, dict[str, list[str]]] = {}
    for site, style in SITES.items():
        notes = site_notes(site, 30, 0, "train")
        assert {d.meta["template"] for d in notes} <= set(style.templates)
        found: dict[str, list[str]] = {}
        for doc in notes:
            for span in doc.spans:
                found.setdefault(span.type, []).append(doc.text[span.start:span.end])
        values[site] = found
    templates = [set(style.templates) for style in SITES.values()]
    assert sum(len(t) for t in templates) == len(set().union(*templates))  # disjoint layouts
    assert all(re.fullmatch(r"\d{8}", v) for v in values["academic"]["MEDICALRECORD"])
    assert all(re.fullmatch(r"MR-\d{3}-\d{3}", v) for v in values["community"]["MEDICALRECORD"])
    assert all(re.fullmatch(r"V\d{3}-\d\d-\d{4}", v) for v in values["veterans"]["MEDICALRECORD"])
    assert any(re.fullmatch(r"\d\d\.\d\d\.\d{4}", v) for v in values["rural"]["DATE"])
    assert any(re.fullmatch(r"\d\d-[A-Z]{3}-\d{4}", v) for v in values["veterans"]["DATE"])
    vietnamese = "".join(values["veterans"]["PATIENT"] + values["veterans"]["DOCTOR"])
    assert re.search("[\u1ea0-\u1eff]", vietnamese)  # letters like ễ, ạ: another alphabet
    polish = "".join(values["rural"]["PATIENT"] + values["rural"]["DOCTOR"])
    assert re.search("[łśżźćńŁŚŻŹĆŃ]", polish)


def test_unknown_site_is_a_config_error(pack: DeidNerTask) -> None:
    with pytest.raises(ConfigError, match="unknown deid-ner site"):
        pack.load_site("nowhere", None, 0)


# --- vocabulary, windows, batching ------------------------------------------------------------


def test_vocabulary_comes_from_public_text_so_names_are_unknown(rural) -> None:
    vocab = shared_vocab()
    public = {tok.text.lower() for text in public_texts() for tok in tokenize(text)}
    assert {w for w in vocab.words[2:]} <= {re.sub(r"\d", "0", w) for w in public}
    names = [doc.text[s.start:s.end] for doc in rural.train.documents for s in doc.spans
             if s.type == "PATIENT"]
    tokens = [tok.text for name in names for tok in tokenize(name) if len(tok.text) > 1]
    known = [t for t in tokens if vocab.word_id(t) != 1]
    assert len(tokens) > 50 and len(known) <= 0.05 * len(tokens), known


def test_windows_batch_with_the_default_collate(rural) -> None:
    data = rural.train
    inputs, targets = next(iter(DataLoader(data, batch_size=4)))
    assert inputs.shape == (4, WINDOW, FEATURES) and inputs.dtype == torch.int64
    assert targets.shape == (4, WINDOW)
    batch = unpack(data.inputs)
    mask = batch["mask"]
    assert torch.equal(mask, data.targets != IGNORE)
    lengths = mask.sum(1)
    assert torch.equal(mask, torch.arange(WINDOW) < lengths[:, None])  # a prefix per window
    assert batch["chars"].shape[-1] == MAX_CHARS and int(batch["words"][~mask].max()) == 0
    tokens = sum(len(tokenize(doc.text)) for doc in data.documents)
    assert int(lengths.sum()) >= tokens  # overlapping windows cover every token
    assert len(data) > len(data.documents)  # long notes span several windows
    assert set(data.targets[mask].tolist()) <= set(range(len(LABELS)))
    assert rural.val is not None and len(rural.test.documents) == 24


# --- model, loss, DP --------------------------------------------------------------------------


def test_model_shapes_and_crf_loss_matches_pytorch_crf(pack: DeidNerTask, rural) -> None:
    model = exact_model()
    x, y = rural.train.inputs[:3], rural.train.targets[:3]
    potentials = model(x)
    k = len(LABELS)
    assert potentials.shape == (3, WINDOW + 2 + k, k)
    emissions = model.emissions(unpack(x))
    expected = -CRF.forward(model.crf, emissions, y.clamp_min(0), mask=y != IGNORE,
                            reduction="mean")
    torch.testing.assert_close(pack.loss(potentials, y), expected)
    torch.testing.assert_close(crf_nll(model.crf(emissions[:1]), y[:1]),
                               -CRF.forward(model.crf, emissions[:1], y[:1].clamp_min(0),
                                            mask=y[:1] != IGNORE, reduction="mean"))


def test_per_example_gradients_are_exact_for_dp_sgd(pack: DeidNerTask, rural) -> None:
    """Opacus's per-example gradients (DPLSTM's, the CRF's through its functorch fallback,
    the per-example character CNN's) equal single-example backprops."""
    model = exact_model()
    assert ModuleValidator.validate(model, strict=True) == []
    x, y = rural.train.inputs[:3], rural.train.targets[:3]
    wrapped = GradSampleModule(copy.deepcopy(model))
    pack.loss(wrapped(x), y).backward()
    sampled = dict(wrapped._module.named_parameters())
    assert {"crf.transitions", "fwd.weight_ih_l0", "char_cnn.weight"} <= set(sampled)
    for i in range(3):
        single = copy.deepcopy(model)
        pack.loss(single(x[i:i + 1]), y[i:i + 1]).backward()
        for name, param in single.named_parameters():
            expected = param.grad if param.grad is not None else torch.zeros_like(param)
            got = sampled[name].grad_sample[i].clone()
            if name == "char.weight":
                # Opacus ignores padding_idx: under DP-SGD the padding character's vector is
                # learned too (the same function in deid's tagger, which embeds it likewise).
                got[0] = expected[0]
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5, msg=name)


def test_exported_checkpoint_is_a_deid_tagger_with_the_same_spans(rural, tmp_path: Path) -> None:
    model = exact_model()
    with torch.no_grad():  # checkpoints store fp16: compare at the precision that ships
        for param in model.parameters():
            param.copy_(param.half().float())
    path = export_tagger(model, tmp_path / "bilstm_crf.pt")
    loaded = BiLstmCrfTagger.load(path)
    texts = rural.test.texts[:3]
    assert [[(s.start, s.end, s.type) for s in spans] for spans in loaded.predict(texts)] == \
        [[(s.start, s.end, s.type) for s in spans] for spans in as_tagger(model).predict(texts)]
    vocab = json.loads(path.with_name("bilstm_crf.vocab.json").read_text())
    assert vocab["words"] == shared_vocab().words  # the public vocabulary, nothing from a site


def test_local_training_improves_phi_f1(pack: DeidNerTask, rural) -> None:
    torch.manual_seed(0)
    model = pack.build_model()
    before = pack.evaluate(model, rural.test, CPU)
    train_round(pack, model, rural.train, TrainSettings(4, 16, 0.01, momentum=0.9), CPU)
    after = pack.evaluate(model, rural.test, CPU)
    assert set(after) == set(pack.metrics) and pack.primary_metric == "phi_recall"
    assert after["phi_f1"] >= before["phi_f1"] + 0.2, (before, after)
    assert 0.0 <= after["phi_recall"] <= 1.0


# --- a hospital's own annotated notes ---------------------------------------------------------


def test_reads_a_sites_own_i2b2_folders(pack: DeidNerTask, tmp_path: Path) -> None:
    for split, folder, n in (("train", "train", 4), ("val", "dev", 2), ("test", "test", 2)):
        (tmp_path / "north" / folder).mkdir(parents=True)
        for doc in site_notes("community", n, 0, split):
            write_i2b2(tmp_path / "north" / folder / f"{doc.doc_id}.xml", doc)
    (tmp_path / "notes-only").mkdir()  # not a site: no train/ and test/
    assert pack.site_names(tmp_path) == ["north"]
    data = pack.load_site("north", tmp_path, seed=0)
    assert len(data.train.documents) == 4 and len(data.test.documents) == 2
    assert data.val is not None and len(data.val.documents) == 2
    assert data.train.texts == [d.text for d in site_notes("community", 4, 0, "train")]
    (tmp_path / "north" / "test" / "broken.xml").write_text("<deIdi2b2><TEXT>")
    with pytest.raises(DataError, match="broken.xml"):
        pack.load_site("north", tmp_path, seed=0)
    with pytest.raises(DataError, match="no site folders"):
        pack.site_names(tmp_path / "notes-only")


# --- federated, through Flower's Simulation Engine, DP on -------------------------------------


def test_short_federation_with_dp(repo: Path, tmp_path: Path) -> None:
    """Two sites, two rounds of DP-SGD under the default policy (no site init needed)."""
    sites = ["rural", "veterans"]
    out = tmp_path / "run"
    code = main(["run", str(repo / "examples" / "deid-ner"), "--rounds", "2",
                 "--sites-home", str(tmp_path / "homes"), "--out", str(out),
                 "--set", "sites=" + ",".join(sites)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert sorted(metrics["final"]["per_site"]) == sites
    for site in sites:
        assert set(metrics["final"]["per_site"][site]) >= {"phi_recall", "phi_precision",
                                                           "phi_f1"}
        assert 0 < metrics["privacy"][site]["epsilon"] <= 8.0 + 1e-6  # the run's target
        assert metrics["rounds"][0]["fit"][site]["noise-multiplier"] > 0
    assert (out / "model.pt").is_file()


def test_pack_is_registered(pack: DeidNerTask) -> None:
    assert "deid-ner" in task_names() and pack.site_names() == list(SITES)
    assert isinstance(NoteWindows([]), NoteWindows) and len(NoteWindows([])) == 0
