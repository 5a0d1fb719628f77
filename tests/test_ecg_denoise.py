"""The ``ecg-denoise`` pack: per-site noisy/clean pairs, SNR/RMSE metrics, reader, training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import welch

from fedmed.data.ecg_synth import (
    DENOISE_RATE,
    DENOISE_SAMPLES,
    NOISE_KINDS,
    SITES,
    make_denoise_pairs,
    make_noise,
)
from fedmed.errors import ConfigError, DataError
from fedmed.tasks import get_task
from fedmed.tasks.ecg_denoise import (
    N_TEST,
    N_TRAIN,
    EcgDenoiseTask,
    denoise_scores,
    denoise_windows,
    snr_db,
)
from fedmed.training.loop import TrainSettings, train_round

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pack() -> EcgDenoiseTask:
    task = get_task("ecg-denoise")
    assert isinstance(task, EcgDenoiseTask)
    return task


@pytest.fixture(scope="module")
def pairs():
    return {site: make_denoise_pairs(site, 60, seed=0) for site in SITES}


# --- data -----------------------------------------------------------------------------------


def test_pack_contract(pack: EcgDenoiseTask) -> None:
    assert pack.metrics == ("snr_improvement_db", "rmse")
    assert pack.primary_metric == "snr_improvement_db"  # higher is better, as tables assume
    assert pack.site_names() == list(SITES)


def test_pairs_have_the_stated_input_snr(pairs) -> None:
    for data in pairs.values():
        assert data.noisy.shape == data.clean.shape == (60, DENOISE_SAMPLES)
        assert data.noisy.dtype == np.float32
        assert np.allclose(snr_db(data.clean, data.noisy), data.snr_in_db, atol=1e-3)
    again = make_denoise_pairs("leeds", 60, seed=0)
    assert np.array_equal(again.noisy, pairs["leeds"].noisy)
    assert not np.array_equal(make_denoise_pairs("leeds", 60, seed=1).noisy, again.noisy)


def test_each_site_has_its_own_noise(pairs) -> None:
    """Where the noise power sits in frequency tells the sites apart as the mixes say."""

    def band_share(site: str, low: float, high: float) -> float:
        noise = pairs[site].noisy - pairs[site].clean
        freqs, power = welch(noise, fs=DENOISE_RATE, nperseg=256, axis=-1)
        band = (freqs >= low) & (freqs < high)
        return float(power[:, band].sum() / power.sum())

    def muscle(site: str) -> float:  # above the ECG band, mains excluded
        return band_share(site, 15, 45) + band_share(site, 65, 125)

    assert band_share("boston", 58, 62) > 0.3  # 60 Hz mains
    assert band_share("boston", 58, 62) > 5 * band_share("leeds", 58, 62)
    assert band_share("lyon", 48, 52) > 5 * band_share("boston", 48, 52)  # 50 Hz in Lyon
    assert band_share("leeds", 0, 1.5) > 5 * band_share("boston", 0, 1.5)  # baseline wander
    for site in ("leeds", "osaka"):  # electrode motion reaches into the ECG band
        assert band_share(site, 1.5, 15) > 5 * band_share("boston", 1.5, 15)
    assert muscle("lyon") > 0.5 and muscle("lyon") > 2 * muscle("leeds")


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_sources_are_unit_rms(kind: str) -> None:
    noise = make_noise(kind, DENOISE_SAMPLES, 50.0, np.random.default_rng(0))
    assert noise.shape == (DENOISE_SAMPLES,)
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="noise kind"):
        make_noise("thermal", 10, 50.0, np.random.default_rng(0))


def test_site_splits_are_fixed_and_scaled(pack: EcgDenoiseTask) -> None:
    first, other_seed = pack.load_site("osaka", None, 0), pack.load_site("osaka", None, 7)
    assert first.fingerprint == other_seed.fingerprint  # the seed varies training only
    assert len(first.train) == N_TRAIN and len(first.test) == N_TEST  # type: ignore[arg-type]
    noisy, clean = first.test[0]
    assert noisy.shape == clean.shape == (1, DENOISE_SAMPLES)
    assert float(noisy.std()) == pytest.approx(1.0, rel=1e-3)  # scaled by the noisy window's std
    raw = make_denoise_pairs("osaka", N_TRAIN + N_TEST, 0)
    ratio = raw.clean[N_TRAIN] / raw.noisy[N_TRAIN].std()
    assert np.allclose(clean[0].numpy(), ratio, atol=1e-5)  # the same factor for both


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_on_known_inputs() -> None:
    cycles = np.arange(DENOISE_SAMPLES) / DENOISE_SAMPLES  # whole periods: exact powers
    clean = np.stack([np.sin(2 * np.pi * 5 * cycles), 2 * np.sin(2 * np.pi * 8 * cycles)])
    noise = np.stack([0.1 * np.cos(2 * np.pi * 100 * cycles), 0.2 * np.ones(DENOISE_SAMPLES)])
    noisy = clean + noise
    # Signal power 0.5 and 2 over noise power 0.005 and 0.04: 20 dB and 16.99 dB.
    assert np.allclose(snr_db(clean, noisy), [20.0, 10 * np.log10(2 / 0.04)], atol=1e-9)
    identity = denoise_scores(noisy, noisy, clean)
    assert identity["snr_improvement_db"] == pytest.approx(0.0, abs=1e-9)
    assert identity["rmse"] == pytest.approx((0.1 / np.sqrt(2) + 0.2) / 2, rel=1e-3)
    perfect = denoise_scores(noisy, clean, clean)
    assert perfect["snr_improvement_db"] > 80 and perfect["rmse"] == 0.0
    halved = denoise_scores(noisy, clean + noise / 2, clean)  # half the noise amplitude: +6 dB
    assert halved["snr_improvement_db"] == pytest.approx(20 * np.log10(2), abs=1e-6)
    with pytest.raises(ValueError, match="equal"):
        denoise_scores(noisy, clean[:1], clean)


def test_identity_model_scores_zero_improvement(pack: EcgDenoiseTask) -> None:
    data = pack.load_site("lyon", None, 0)
    scores = pack.evaluate(torch.nn.Identity(), data.test, CPU)
    assert set(scores) == set(pack.metrics)
    assert scores["snr_improvement_db"] == pytest.approx(0.0, abs=1e-5)


def test_local_epochs_improve_snr_over_the_untrained_model(pack: EcgDenoiseTask) -> None:
    data = pack.load_site("lyon", None, 0)
    torch.manual_seed(0)
    model = pack.build_model()
    before = pack.evaluate(model, data.test, CPU)
    settings = TrainSettings(local_epochs=3, batch_size=pack.default_batch_size,
                             lr=pack.default_lr, seed=0)
    train_round(pack, model, data.train, settings, CPU)
    after = pack.evaluate(model, data.test, CPU)
    assert after["snr_improvement_db"] > 3.0  # better than doing nothing
    assert after["snr_improvement_db"] > before["snr_improvement_db"] + 5.0
    assert after["rmse"] < before["rmse"]
    # Inference in mV goes through the same scaling and comes back in mV.
    raw = make_denoise_pairs("lyon", N_TRAIN + N_TEST, 0)
    denoised = denoise_windows(model, raw.noisy[N_TRAIN:])
    gain = snr_db(raw.clean[N_TRAIN:], denoised) - snr_db(raw.clean[N_TRAIN:], raw.noisy[N_TRAIN:])
    assert gain.mean() == pytest.approx(after["snr_improvement_db"], abs=1e-3)
    with pytest.raises(DataError, match=str(DENOISE_SAMPLES)):
        denoise_windows(model, np.zeros(100))


# --- real pairs -------------------------------------------------------------------------------


def _write_site(root: Path, site: str, **arrays: np.ndarray) -> Path:
    (root / site).mkdir(parents=True)
    path = root / site / "pairs.npz"
    np.savez(path, **arrays)
    return path


def test_real_pairs_folder_loads(pack: EcgDenoiseTask, tmp_path: Path) -> None:
    data = make_denoise_pairs("boston", 40, 0)
    _write_site(tmp_path, "site-x", noisy=data.noisy, clean=data.clean)
    assert pack.site_names(tmp_path) == ["site-x"]
    site = pack.load_site("site-x", tmp_path, 0)
    assert len(site.train) + len(site.test) == 40  # type: ignore[arg-type]
    assert 0 < len(site.test) < 40  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"noisy": np.zeros((4, DENOISE_SAMPLES))}, "missing array"),
        ({"noisy": np.zeros((4, 100)), "clean": np.zeros((4, 100))}, "expected"),
        ({"noisy": np.full((4, DENOISE_SAMPLES), np.nan), "clean": np.zeros((4, DENOISE_SAMPLES))},
         "NaN"),
        ({"noisy": np.zeros((1, DENOISE_SAMPLES)), "clean": np.zeros((1, DENOISE_SAMPLES))},
         "too few"),
    ],
)
def test_bad_pairs_raise_data_errors_naming_the_file(
    pack: EcgDenoiseTask, tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _write_site(tmp_path, "bad", **arrays)
    with pytest.raises(DataError, match=message) as error:
        pack.load_site("bad", tmp_path, 0)
    assert str(path) in str(error.value)


def test_unreadable_or_missing_files_are_data_errors(pack: EcgDenoiseTask, tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "pairs.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable"):
        pack.load_site("broken", tmp_path, 0)
    with pytest.raises(DataError, match="not found"):
        pack.load_site("absent", tmp_path, 0)
    with pytest.raises(DataError, match="no site folders"):
        pack.site_names(tmp_path / "broken")
