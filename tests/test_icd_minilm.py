"""The ``icd-minilm`` pack: the icd notes read by all-MiniLM-L6-v2 (frozen lower layers)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from node_round import ICD_EVIDENCE, ICD_SCORES, dp_round_through_the_node
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator

from fedmed.data.icd_synth import CODE_IDS
from fedmed.tasks import get_task, task_names
from fedmed.tasks.icd_minilm import (
    FROZEN_LAYERS,
    MAX_SUBWORDS,
    IcdMiniLMTask,
    MiniLMCoder,
    pretrained,
    subwords,
)
from fedmed.training.loop import TrainSettings, get_weights, train_round

CPU = torch.device("cpu")
SITE = "rural"


@pytest.fixture(scope="module")
def pack() -> IcdMiniLMTask:
    task = get_task("icd-minilm")
    assert isinstance(task, IcdMiniLMTask)
    return task


@pytest.fixture(scope="module")
def gate_home(
    tmp_path_factory: pytest.TempPathFactory, seeded_gate_home: Callable[[Path], Path]
) -> Path:
    return seeded_gate_home(tmp_path_factory.mktemp("icd-minilm-gate"))


@pytest.fixture(scope="module")
def rural(pack: IcdMiniLMTask, gate_home: Path):
    """One site through the real gate and the frozen encoder (done once for the module)."""
    return pack.load_builtin_site(SITE, gate_home)


def test_a_later_process_reads_the_frozen_states_kept_beside_the_admitted_notes(
    pack: IcdMiniLMTask, rural, gate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = sorted(gate_home.rglob("minilm-states-*.pt"))
    assert len(kept) == 2  # train and test
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in kept)  # derived patient text

    def no_encoder(*_: object) -> torch.Tensor:
        raise AssertionError("the frozen layers ran again")

    monkeypatch.setattr("fedmed.tasks.icd_minilm.frozen_states", no_encoder)
    again = pack.load_builtin_site(SITE, gate_home)
    assert torch.equal(again.train.inputs, rural.train.inputs)
    assert again.fingerprint == rural.fingerprint

    # An unreadable file is encoded again: the test split's (the smaller file, 40 notes
    # against 120 — the same code path at a third of the encoding time).
    min(kept, key=lambda path: path.stat().st_size).write_bytes(b"cut short by a full disk")
    monkeypatch.undo()
    healed = pack.load_builtin_site(SITE, gate_home)
    assert torch.equal(healed.train.inputs, rural.train.inputs)
    assert torch.equal(healed.test.inputs, rural.test.inputs)


def test_inputs_are_the_mask_then_the_frozen_fifth_layer(rural) -> None:
    inputs, targets = rural.train[0]
    _, encoder = pretrained()
    assert inputs.shape == (MAX_SUBWORDS, 1 + encoder.config.hidden_size)
    assert targets.shape == (len(CODE_IDS),)
    ids = rural.train.subword_ids
    assert int((ids != 0).sum(dim=1).max()) < MAX_SUBWORDS  # no built-in note is cut
    torch.testing.assert_close(rural.train.inputs[..., 0], (ids != 0).float())
    with torch.no_grad():
        hidden = encoder(input_ids=ids[:2], attention_mask=(ids[:2] != 0).long(),
                         output_hidden_states=True).hidden_states[FROZEN_LAYERS]
    torch.testing.assert_close(rural.train.inputs[:2, :, 1:], hidden)
    # the data fingerprint is built from subword ids, not from machine-dependent floats
    assert [a.dtype.kind for a in rural.train.identity()] == ["i", "f"]


@pytest.fixture(scope="module")
def trained(pack: IcdMiniLMTask, rural) -> tuple[MiniLMCoder, list, list]:
    """A model after 3 local epochs on the site (trained once for the module), its weights
    before, and the shared pretrained sixth layer's weights before."""
    torch.manual_seed(0)
    model = pack.build_model()
    assert isinstance(model, MiniLMCoder)
    _, encoder = pretrained()
    frozen_before = [w.clone() for w in encoder.encoder.layer[FROZEN_LAYERS].parameters()]
    before = get_weights(model)
    train_round(pack, model, rural.train, TrainSettings(3, 16, pack.default_lr, seed=0), CPU)
    return model, before, frozen_before


def test_only_the_sixth_layer_and_the_head_train_and_travel(trained) -> None:
    model, before, frozen_before = trained
    assert {key.split(".")[0] for key in model.state_dict()} == {"top", "attention", "output"}
    assert sum(p.numel() for p in model.parameters()) < 2_000_000  # of 22.7 M in the encoder
    assert any((a != b).any() for a, b in zip(before, get_weights(model), strict=True))
    _, encoder = pretrained()
    for original, now in zip(frozen_before, encoder.encoder.layer[FROZEN_LAYERS].parameters(),
                             strict=True):
        torch.testing.assert_close(original, now)  # the shared pretrained copy is untouched


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Training mode (Opacus records activations only then) with every dropout at p = 0."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def test_dp_per_example_gradients_are_exact(pack: IcdMiniLMTask, rural) -> None:
    model = without_dropout(pack.build_model())
    assert ModuleValidator.validate(model, strict=True) == []
    batch, targets = rural.train.inputs[:3], rural.train.targets[:3]
    wrapped = GradSampleModule(model)
    pack.loss(wrapped(batch), targets).backward()
    single = without_dropout(pack.build_model())
    single.load_state_dict(model.state_dict())
    pack.loss(single(batch[1:2]), targets[1:2]).backward()  # Opacus undoes the batch mean
    for name in ("top.output.dense.weight", "top.attention.self.query.weight",
                 "attention.weight"):
        sampled = model.get_parameter(name).grad_sample
        torch.testing.assert_close(sampled[1], single.get_parameter(name).grad,
                                   rtol=1e-3, atol=1e-6)


def test_evidence_spans_are_released_text(trained, rural) -> None:
    model = trained[0]
    explained = 0
    for text in rural.test.texts[:5]:
        offsets = subwords([text])[2][0]
        assert all(text[start:end].strip() for start, end in offsets)
        for item in model.evidence(text, top_k=3):
            assert item.code in CODE_IDS and item.probability >= 0.5
            for span in item.spans:
                assert text[span.start:span.end] == span.text and span.text.strip()
            explained += 1
    assert explained >= 3


def test_a_dp_round_through_the_node_spends_epsilon_and_writes_evidence(
    pack: IcdMiniLMTask, rural, tmp_path: Path
) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "icd-minilm"
    dp_round_through_the_node(pack, rural, example, tmp_path, ICD_SCORES, ICD_EVIDENCE)
    assert "icd-minilm" in task_names()
