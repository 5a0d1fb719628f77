"""The ``icd-sentences`` pack: the icd notes as frozen MiniLM sentence embeddings, under a
per-code attention head that is all that trains."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from node_round import ICD_EVIDENCE, ICD_SCORES, dp_round_through_the_node
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator

from fedmed.data.icd_synth import CODE_IDS, describe
from fedmed.dp_recipes import RECIPES
from fedmed.tasks import get_task
from fedmed.tasks.icd_sentences import (
    EMBEDDING_DIM,
    EMBEDDING_SCALE,
    MAX_SENTENCES,
    TITLE_LOGIT_SCALE,
    IcdSentencesTask,
    SentenceCoder,
    embed_sentences,
    sentence_spans,
)
from fedmed.training.loop import TrainSettings, train_round

CPU = torch.device("cpu")
SITE = "veterans"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "icd-sentences"


@pytest.fixture(scope="module")
def pack() -> IcdSentencesTask:
    task = get_task("icd-sentences")
    assert isinstance(task, IcdSentencesTask)
    return task


@pytest.fixture(scope="module")
def gate_home(
    tmp_path_factory: pytest.TempPathFactory, seeded_gate_home: Callable[[Path], Path]
) -> Path:
    return seeded_gate_home(tmp_path_factory.mktemp("icd-sentences-gate"))


@pytest.fixture(scope="module")
def site(pack: IcdSentencesTask, gate_home: Path):
    """One site through the real gate and the frozen encoder (done once for the module)."""
    return pack.load_builtin_site(SITE, gate_home)


def test_sentences_are_cut_at_sentence_marks_but_not_after_list_numbers() -> None:
    text = "History:\n1. COPD\n  Labs were reviewed.  No signs of sepsis!\nCall 555 today."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "History:", "1. COPD", "Labs were reviewed.", "No signs of sepsis!", "Call 555 today."]
    assert len(sentence_spans("Fine. " * (MAX_SENTENCES + 5))) == MAX_SENTENCES
    assert sentence_spans("  \n\n ") == []


def test_a_note_is_its_sentences_embeddings_scaled_then_padded(site) -> None:
    dataset = site.train
    features, targets = dataset[0]
    assert features.shape == (MAX_SENTENCES, 1 + EMBEDDING_DIM)
    assert targets.shape == (len(CODE_IDS),)
    text = dataset.texts[0]
    sentences = [text[a:b] for a, b in sentence_spans(text)]
    assert int(features[:, 0].sum()) == len(sentences) > 5
    torch.testing.assert_close(features[: len(sentences), 1:],
                               embed_sentences(sentences) * EMBEDDING_SCALE, atol=1e-5, rtol=1e-4)
    assert not features[len(sentences):].any()  # padding is zero, mask included
    longest = max(len(sentence_spans(t)) for t in dataset.texts + site.test.texts)
    assert longest < MAX_SENTENCES  # no built-in note is cut
    # the data fingerprint is built from the texts, not from machine-dependent floats
    assert [a.dtype.kind for a in dataset.identity()] == ["u", "f"]


def test_a_later_process_reads_the_embeddings_kept_beside_the_admitted_notes(
    pack: IcdSentencesTask, site, gate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = sorted(gate_home.rglob("minilm-sentences-*.pt"))
    assert len(kept) == 2  # train and test
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in kept)  # derived patient text

    def no_encoder(*_: object) -> torch.Tensor:
        raise AssertionError("the encoder ran again")

    monkeypatch.setattr("fedmed.tasks.icd_sentences.embed_sentences", no_encoder)
    again = pack.load_builtin_site(SITE, gate_home)
    assert torch.equal(again.train.inputs, site.train.inputs)
    assert again.fingerprint == site.fingerprint


def test_only_the_head_trains_and_its_per_example_gradients_are_exact(
    pack: IcdSentencesTask, site
) -> None:
    model = pack.build_model()
    assert isinstance(model, SentenceCoder)
    assert sum(p.numel() for p in model.parameters()) == 2 * (EMBEDDING_DIM + 1) * len(CODE_IDS)
    assert ModuleValidator.validate(model, strict=True) == []
    batch = torch.stack([site.train[i][0] for i in range(3)])
    targets = site.train.targets[:3]
    wrapped = GradSampleModule(model)
    pack.loss(wrapped(batch), targets).backward()
    single = pack.build_model()
    single.load_state_dict(model.state_dict())
    pack.loss(single(batch[1:2]), targets[1:2]).backward()  # Opacus undoes the batch mean
    for name in ("attention.weight", "output.weight", "output.bias"):
        torch.testing.assert_close(model.get_parameter(name).grad_sample[1],
                                   single.get_parameter(name).grad, rtol=1e-3, atol=1e-6)


def test_the_untrained_head_is_a_zero_shot_coder_from_the_code_titles(
    pack: IcdSentencesTask, site
) -> None:
    titled = pack.build_model()
    titles = embed_sentences([describe(code) for code in CODE_IDS])
    torch.testing.assert_close(titled.output.weight * EMBEDDING_SCALE, titles * TITLE_LOGIT_SCALE)
    torch.manual_seed(0)
    random_start = SentenceCoder(len(CODE_IDS))  # the same head without the titles
    zero_shot = pack.evaluate(titled, site.test, CPU)["micro_f1"]
    assert zero_shot > pack.evaluate(random_start, site.test, CPU)["micro_f1"] + 0.2


def test_training_codes_the_test_notes_and_evidence_is_released_sentences(
    pack: IcdSentencesTask, site
) -> None:
    torch.manual_seed(0)
    model = pack.build_model()
    untrained = pack.evaluate(model, site.test, CPU)["micro_f1"]
    train_round(pack, model, site.train, TrainSettings(10, 16, pack.default_lr, seed=0), CPU)
    scores = pack.evaluate(model, site.test, CPU)
    assert scores["micro_f1"] > untrained + 0.2  # 0.49 → 0.82 on 120 notes
    explained = 0
    for text in site.test.texts[:5]:
        sentences = {text[a:b] for a, b in sentence_spans(text)}
        for item in model.evidence(text, top_k=2):
            assert item.code in CODE_IDS and item.probability >= 0.5
            for span in item.spans:
                assert text[span.start:span.end] == span.text and span.text in sentences
            explained += 1
    assert explained >= 5


def test_a_dp_round_of_the_example_through_the_node_spends_epsilon_and_writes_evidence(
    pack: IcdSentencesTask, site, tmp_path: Path
) -> None:
    config = dp_round_through_the_node(pack, site, EXAMPLE, tmp_path, ICD_SCORES, ICD_EVIDENCE)
    assert config.task == "icd-sentences" and config.dp
    recipe = RECIPES["icd-sentences"]  # the example leaves lr and clip to the measured recipe
    assert (config.lr, config.clip_norm) == (recipe["lr"], recipe["clip-norm"])
