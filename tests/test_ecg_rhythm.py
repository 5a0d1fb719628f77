"""The ``ecg-rhythm`` pack: a linear layer over fixed rhythm features, trained with DP-SGD.

The feature tests use pulse trains built here, not the site generator: what the front end
claims to read (rate, regularity, noise) must hold on any trace.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from node_round import dp_round_through_the_node
from opacus.validators import ModuleValidator

from fedmed.data.ecg_readers import COMMON_RATE, WINDOW_SAMPLES
from fedmed.dp_recipes import RECIPES
from fedmed.tasks import get_task
from fedmed.tasks.ecg import EcgTask, predict_windows
from fedmed.tasks.ecg_rhythm import (
    FEATURES,
    FIRST_LAG,
    LAG_AVERAGE,
    LAG_SPAN,
    EcgRhythmNet,
    EcgRhythmTask,
    RhythmFeatures,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ecg-rhythm"
RHYTHM = slice(0, LAG_SPAN // LAG_AVERAGE)
HIGH_BAND_SHARE = LAG_SPAN // LAG_AVERAGE + 2


def _pulses(beat_times: np.ndarray, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """A standardised (1, 1, samples) trace of narrow QRS-like pulses at ``beat_times`` (s)."""
    time = np.arange(WINDOW_SAMPLES) / COMMON_RATE
    trace = sum(np.exp(-0.5 * ((time - t) / 0.012) ** 2) for t in beat_times)
    trace = trace + noise * np.random.default_rng(seed).standard_normal(WINDOW_SAMPLES)
    trace = (trace - trace.mean()) / trace.std()
    return torch.tensor(trace, dtype=torch.float32)[None, None]


def _regular(rr: float) -> np.ndarray:
    return np.arange(0.3, WINDOW_SAMPLES / COMMON_RATE, rr)


def _peak_lag(features: torch.Tensor) -> float:
    """The lag (s) of the highest rhythm feature: the centre of its averaged lags."""
    index = int(features[0, RHYTHM].argmax())
    return (FIRST_LAG + LAG_AVERAGE * index + (LAG_AVERAGE - 1) / 2) / COMMON_RATE


def test_the_front_end_trains_nothing_and_only_a_small_head_learns() -> None:
    pack = get_task("ecg-rhythm")
    assert isinstance(pack, EcgRhythmTask) and isinstance(pack, EcgTask)
    model = pack.build_model()
    assert isinstance(model, EcgRhythmNet)
    assert list(model.features.parameters()) == []  # filters are buffers: no noise, no update
    assert sum(p.numel() for p in model.parameters()) == (FEATURES + 1) * 5 == 285
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(torch.randn(3, 1, WINDOW_SAMPLES)).shape == (3, 5)
    probabilities = predict_windows(model, np.random.default_rng(0).standard_normal(
        (2, WINDOW_SAMPLES)))  # deployment's inference path takes raw windows too
    assert probabilities.shape == (2, 5) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert "ecg-rhythm" in RECIPES and pack.default_lr == 2.0


def test_the_rhythm_features_find_the_beat_interval() -> None:
    features = RhythmFeatures()
    for rr in (0.45, 0.8, 1.3):  # 133, 75 and 46 bpm
        assert abs(_peak_lag(features(_pulses(_regular(rr)))) - rr) <= 0.03, rr


def test_an_irregular_rhythm_loses_the_autocorrelation_peaks_a_regular_one_has() -> None:
    features = RhythmFeatures()
    rng = np.random.default_rng(3)
    irregular = np.cumsum(rng.lognormal(np.log(0.7), 0.3, size=10)) - 0.3
    regular_peak = float(features(_pulses(_regular(0.7)))[0, RHYTHM].max())
    irregular_peak = float(features(_pulses(irregular[irregular < 5.0]))[0, RHYTHM].max())
    assert regular_peak > 0.8 and irregular_peak < regular_peak - 0.3


def test_noise_raises_the_high_band_share() -> None:
    features = RhythmFeatures()
    clean = features(_pulses(_regular(0.8)))[0, HIGH_BAND_SHARE]
    noisy = features(_pulses(_regular(0.8), noise=0.5))[0, HIGH_BAND_SHARE]
    assert float(noisy) > float(clean) + 0.2


def test_a_dp_round_of_the_example_through_the_node_spends_epsilon_and_writes_saliency(
    tmp_path: Path,
) -> None:
    """The example's measured recipe reaches the node, which trains one DP-SGD round within
    the run's ε = 1, scores the model and writes a saliency PNG per explained window."""
    pack = get_task("ecg-rhythm")
    data = pack.load_site("osaka", None, 0)
    config = dp_round_through_the_node(
        pack, data, EXAMPLE, tmp_path, {"accuracy", "macro_f1"},
        [f"saliency-{{site}}-{index}.png" for index in range(4)])
    recipe = RECIPES["ecg-rhythm"]  # the example leaves batch, lr and clip to the recipe
    assert config.task == "ecg-rhythm" and config.dp
    assert (config.batch_size, config.lr, config.clip_norm) == (
        recipe["batch-size"], recipe["lr"], recipe["clip-norm"])
