"""The added ECG models under DP-SGD (CNN-LSTM, denoising autoencoder, rhythm features) and
1-D Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch.utils.data import Subset

from fedmed.data.ecg_readers import WINDOW_SAMPLES
from fedmed.data.ecg_synth import CLASS_NAMES, DENOISE_SAMPLES
from fedmed.explain.ecg_saliency import EcgSaliency
from fedmed.privacy.sequence_lstm import SequenceLSTM
from fedmed.tasks import get_task, task_names
from fedmed.tasks.ecg import EcgTask
from fedmed.tasks.ecg_lstm import EcgCnnLstm, EcgLstmTask
from tests.node_round import verified_dp_epoch

NEW_MODELS = ("ecg-lstm", "ecg-denoise", "ecg-rhythm")


def test_lstm_pack_is_the_ecg_task_with_another_model() -> None:
    assert {"ecg", "ecg-lstm"} <= set(task_names())
    pack = get_task("ecg-lstm")
    assert isinstance(pack, EcgLstmTask) and isinstance(pack, EcgTask)
    assert pack.metrics == get_task("ecg").metrics and pack.primary_metric == "accuracy"
    ecg, lstm = get_task("ecg").load_site("leeds", None, 0), pack.load_site("leeds", None, 0)
    assert lstm.fingerprint == ecg.fingerprint  # same data, same splits
    model = pack.build_model()
    assert isinstance(model, EcgCnnLstm) and isinstance(model.lstm, SequenceLSTM)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_lstm_model_shapes() -> None:
    torch.manual_seed(0)
    model = EcgCnnLstm().eval()
    windows = torch.randn(3, 1, WINDOW_SAMPLES)
    assert model.features(windows).shape == (3, 64, 31)  # 31 steps reach the LSTM
    assert model(windows).shape == (3, len(CLASS_NAMES))


def _batch(name: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = get_task(name).load_site("lyon", None, 0).train
    return data[:n]  # type: ignore[index]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("name", NEW_MODELS)
def test_per_sample_gradients_are_exact(name: str) -> None:
    """Opacus accepts the model strictly and its per-sample gradients average to the batch
    gradient, so DP-SGD clips what each window really contributed."""
    pack = get_task(name)
    assert ModuleValidator.validate(pack.build_model(), strict=True) == []
    inputs, targets = _batch(name, 4)
    torch.manual_seed(0)
    model = GradSampleModule(pack.build_model())  # one forward: the same dropout masks
    pack.loss(model(inputs), targets).backward()
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    for parameter in model.parameters():
        assert parameter.grad_sample.shape == (4, *parameter.shape)
        assert torch.allclose(parameter.grad_sample.mean(0), parameter.grad, atol=1e-5 * scale)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_one_dp_sgd_round_runs_the_planned_mechanism(name: str) -> None:
    """The node's real DP path: fedmed's DPTrainer (Opacus make_private) in train_round."""
    pack = get_task(name)
    data = Subset(pack.load_site("osaka", None, 0).train, range(64))
    torch.manual_seed(0)
    model = pack.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    trainer, result = verified_dp_epoch(pack, model, data, 32)  # the planned (σ, q, steps)
    assert np.isfinite(result.mean_loss)
    # ecg-rhythm trains one linear layer over fixed features: auto's bookkeeping rule
    assert trainer.mode_used == ("bookkeeping" if name == "ecg-rhythm" else
                                 "hooks" if name == "ecg-lstm" else "ew")
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_denoiser_shapes() -> None:
    model = get_task("ecg-denoise").build_model()
    noisy = torch.randn(2, 1, DENOISE_SAMPLES)
    assert model(noisy).shape == noisy.shape


# --- Grad-CAM -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ecg", "ecg-lstm", "ecg-rhythm"])
def test_saliency_maps_cover_the_trace_in_unit_range(name: str) -> None:
    pack = get_task(name)
    torch.manual_seed(0)
    model = pack.build_model()
    inputs, _ = _batch(name, 3)
    explainer = pack.explainer
    assert isinstance(explainer, EcgSaliency)
    saliency, predicted, probability = explainer.maps(model, inputs)
    assert saliency.shape == (3, WINDOW_SAMPLES)
    assert saliency.min() >= 0.0 and saliency.max() <= 1.0
    assert np.allclose(saliency.max(axis=1), 1.0)  # each map's most important sample is 1
    with torch.no_grad():
        expected = torch.softmax(model.eval()(inputs), dim=1)
    assert np.array_equal(predicted, expected.argmax(1).numpy())
    assert np.allclose(probability, expected.max(1).values.numpy(), atol=1e-6)
    layer = dict(model.named_modules())[explainer.layer]
    assert not layer._forward_hooks and not layer._backward_hooks  # the caller's model is untouched


def test_saliency_pngs_are_written(tmp_path: Path) -> None:
    pack = get_task("ecg-lstm")
    data = pack.load_site("boston", None, 0)
    torch.manual_seed(0)
    assert pack.explainer is not None and get_task("ecg-denoise").explainer is None
    paths = pack.explainer.explain(pack.build_model(), data.test, "boston", tmp_path / "explain",
                                   n=2)
    assert [p.name for p in paths] == ["saliency-boston-0.png", "saliency-boston-1.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
