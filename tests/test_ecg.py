"""The ``ecg`` task pack: simulated sites, real-format readers, model and training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import wfdb
from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from pydicom.data import get_testdata_file
from scipy.stats import skew

from fedmed.data import ecg_synth
from fedmed.data.ecg_readers import (
    COMMON_RATE,
    WINDOW_SAMPLES,
    read_ecg,
    to_model_input,
)
from fedmed.data.ecg_synth import CLASS_NAMES, SITES, make_site_windows, simulate_site
from fedmed.errors import ConfigError, DataError
from fedmed.tasks import get_task, task_names
from fedmed.tasks.ecg import EcgTask, predict_windows
from fedmed.training.loop import TrainSettings, train_round

CPU = torch.device("cpu")
NUM_CLASSES = len(CLASS_NAMES)


@pytest.fixture(scope="module")
def pack() -> EcgTask:
    task = get_task("ecg")
    assert isinstance(task, EcgTask)
    return task


@pytest.fixture(scope="module")
def boston(pack: EcgTask):
    return pack.load_site("boston", None, seed=0)


@pytest.fixture(scope="module")
def raw_sites() -> dict[str, ecg_synth.Recordings]:
    return {site: simulate_site(site, 40, seed=0) for site in SITES}


# --- simulated sites ------------------------------------------------------------------------


def test_pack_is_registered_with_four_default_sites(pack: EcgTask) -> None:
    assert "ecg" in task_names()
    assert pack.site_names() == ["boston", "leeds", "lyon", "osaka"]
    assert pack.metrics == ("accuracy", "macro_f1") and pack.primary_metric == "accuracy"


def test_site_data_shapes_and_classes(boston) -> None:
    assert len(boston.train) == 300 and len(boston.test) == 100
    inputs, labels = boston.train.tensors
    assert inputs.shape == (300, 1, WINDOW_SAMPLES) and inputs.dtype == torch.float32
    assert labels.dtype == torch.int64
    for split in (boston.train, boston.test):
        counts = np.bincount(split.tensors[1].numpy(), minlength=NUM_CLASSES)
        expected = np.round(np.asarray(SITES["boston"].class_mix) * len(split))
        np.testing.assert_array_equal(counts, expected)  # every class, in the site's mix
    assert torch.isfinite(inputs).all()


def test_site_data_is_deterministic_per_site_and_seed() -> None:
    first = make_site_windows("leeds", 3, n_train=20, n_test=10)
    again = make_site_windows("leeds", 3, n_train=20, n_test=10)
    other_seed = make_site_windows("leeds", 4, n_train=20, n_test=10)
    other_site = make_site_windows("lyon", 3, n_train=20, n_test=10)
    np.testing.assert_array_equal(first.x_train, again.x_train)
    np.testing.assert_array_equal(first.y_test, again.y_test)
    assert not np.array_equal(first.x_train, other_seed.x_train)
    assert not np.array_equal(first.x_train, other_site.x_train)


def test_unknown_site_is_a_config_error(pack: EcgTask) -> None:
    with pytest.raises(ConfigError, match="unknown ecg site 'paris'"):
        pack.load_site("paris", None, seed=0)


def test_sites_really_differ(raw_sites: dict[str, ecg_synth.Recordings]) -> None:
    assert len({recordings.fs for recordings in raw_sites.values()}) == len(SITES)

    def usable(site: str) -> np.ndarray:
        recordings = raw_sites[site]
        return recordings.signals[recordings.labels != ecg_synth.NOISY]

    amplitude = {site: np.median(np.ptp(usable(site), axis=1)) for site in SITES}
    assert amplitude["lyon"] < 0.8 * amplitude["boston"] < 0.8 * amplitude["osaka"]

    def wander(signals: np.ndarray, fs: int) -> float:
        one_second = np.ones(fs) / fs
        return float(np.median([np.convolve(s, one_second, "valid").std() for s in signals]))

    wanders = {site: wander(usable(site), raw_sites[site].fs) for site in SITES}
    assert wanders["leeds"] > 2 * max(v for site, v in wanders.items() if site != "leeds")

    # Polarity survives preprocessing: osaka's inverted lead has negatively skewed windows.
    skews = {
        site: np.median([skew(to_model_input(s, raw_sites[site].fs)) for s in usable(site)])
        for site in SITES
    }
    assert skews["osaka"] < -0.5 and all(skews[s] > 0.3 for s in SITES if s != "osaka")


def test_noisy_class_is_much_noisier(raw_sites: dict[str, ecg_synth.Recordings]) -> None:
    recordings = raw_sites["boston"]
    roughness = np.abs(np.diff(recordings.signals, axis=1)).max(axis=1)
    noisy = recordings.labels == ecg_synth.NOISY
    assert np.median(roughness[noisy]) > 3 * np.median(roughness[~noisy])


# --- readers and the model-input path ------------------------------------------------------


def test_dicom_ecg_to_class_probabilities(pack: EcgTask) -> None:
    recording = read_ecg(get_testdata_file("waveform_ecg.dcm"))
    assert recording.signal.shape == (12, 10_000) and recording.fs == 1000.0
    assert recording.signal.dtype == np.float32
    assert recording.leads[1] == "Lead II"
    assert 0.5 < np.ptp(recording.signal[1]) < 5  # converted from µV to mV
    lead = recording.lead_index("lead ii")
    windows = np.stack(
        [to_model_input(recording.signal, recording.fs, lead, start_s=s) for s in (0, 5)]
    )
    assert windows.shape == (2, WINDOW_SAMPLES)
    assert abs(float(windows[0].std()) - 1.0) < 1e-3
    torch.manual_seed(0)
    probabilities = predict_windows(pack.build_model(), windows)
    assert probabilities.shape == (2, NUM_CLASSES)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_wfdb_round_trip(tmp_path: Path) -> None:
    fs = 360
    t = np.arange(4 * fs) / fs
    signal = np.stack([np.sin(2 * np.pi * 1.2 * t), 0.5 * np.cos(2 * np.pi * 3 * t)], axis=1)
    wfdb.wrsamp(
        "rec",
        fs=fs,
        units=["mV", "mV"],
        sig_name=["MLII", "V1"],
        p_signal=signal,
        fmt=["16", "16"],
        write_dir=str(tmp_path),
    )
    for name in ("rec.hea", "rec.dat"):
        recording = read_ecg(tmp_path / name)
        assert recording.fs == fs and recording.leads == ("MLII", "V1")
        np.testing.assert_allclose(recording.signal, signal.T, atol=1e-3)
    window = to_model_input(recording.signal, recording.fs, lead=0)
    assert window.shape == (WINDOW_SAMPLES,)
    assert np.all(window[4 * COMMON_RATE :] == 0)  # a 4 s record is zero-padded to 5 s


def test_csv_reader(tmp_path: Path) -> None:
    path = tmp_path / "ecg.csv"
    values = np.random.default_rng(0).normal(size=(1000, 2))
    np.savetxt(path, values, delimiter=",", header="I,II", comments="")
    recording = read_ecg(path, sampling_rate=250)
    assert recording.signal.shape == (2, 1000) and recording.fs == 250.0
    assert recording.leads == ("I", "II")
    np.testing.assert_allclose(recording.signal, values.T, rtol=1e-6)
    with pytest.raises(DataError, match="sampling rate"):
        read_ecg(path)


def test_to_model_input_resamples_to_the_common_rate() -> None:
    fs = 500
    t = np.arange(10 * fs) / fs
    window = to_model_input(np.sin(2 * np.pi * 2.0 * t), fs)
    spectrum = np.abs(np.fft.rfft(window))
    assert np.argmax(spectrum) * COMMON_RATE / WINDOW_SAMPLES == pytest.approx(2.0)
    with pytest.raises(DataError, match="lead 3"):
        to_model_input(np.zeros((2, 100)), fs, lead=3)


def _truncated_dicom(folder: Path) -> Path:
    data = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()
    path = folder / "truncated.dcm"
    path.write_bytes(data[:20_000])
    return path


def _malformed_csv(folder: Path) -> Path:
    path = folder / "bad.csv"
    path.write_text("I,II\n0.1,0.2\n0.3,oops\n")
    return path


def _garbage_wfdb(folder: Path) -> Path:
    path = folder / "rec.hea"
    path.write_text("this is not a header\n")
    return path


def _missing(folder: Path) -> Path:
    return folder / "absent.dcm"


def _wrong_suffix(folder: Path) -> Path:
    path = folder / "ecg.xml"
    path.write_text("<ecg/>")
    return path


@pytest.mark.parametrize(
    "make_file", [_truncated_dicom, _malformed_csv, _garbage_wfdb, _missing, _wrong_suffix]
)
def test_bad_files_raise_one_line_data_errors(tmp_path: Path, make_file) -> None:
    path = make_file(tmp_path)
    with pytest.raises(DataError) as caught:
        read_ecg(path, sampling_rate=250)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


# --- labelled site folders (real data) -----------------------------------------------------


def _write_site_folder(folder: Path, recordings: ecg_synth.Recordings) -> None:
    folder.mkdir(parents=True)
    rows = ["file,label,sampling_rate"]
    for i, (signal, label) in enumerate(zip(recordings.signals, recordings.labels, strict=True)):
        np.savetxt(folder / f"r{i}.csv", signal[:, None], delimiter=",", header="II", comments="")
        rows.append(f"r{i}.csv,{CLASS_NAMES[label]},{recordings.fs}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def test_real_site_folder_loads_through_the_readers(
    pack: EcgTask, raw_sites: dict[str, ecg_synth.Recordings], tmp_path: Path
) -> None:
    _write_site_folder(tmp_path / "clinic", raw_sites["lyon"])
    assert pack.site_names(tmp_path) == ["clinic"]
    site = pack.load_site("clinic", tmp_path, seed=0)
    assert len(site.train) + len(site.test) == 40 and len(site.test) > 0
    windows = torch.cat([site.train.tensors[0], site.test.tensors[0]])[:, 0].numpy()
    assert windows.shape == (40, WINDOW_SAMPLES)
    # The same preprocessing as the synthetic path: a file's window equals to_model_input's.
    expected = to_model_input(raw_sites["lyon"].signals[0], raw_sites["lyon"].fs)
    assert np.abs(windows - expected).max(axis=1).min() < 1e-4


def test_bad_label_names_the_labels_file(pack: EcgTask, tmp_path: Path) -> None:
    folder = tmp_path / "clinic"
    folder.mkdir()
    np.savetxt(folder / "a.csv", np.zeros((500, 1)), delimiter=",", header="II", comments="")
    (folder / "labels.csv").write_text("file,label,sampling_rate\na.csv,flutter,100\n")
    with pytest.raises(DataError, match=r"labels\.csv: row 2, column 'label': 'flutter'"):
        pack.load_site("clinic", tmp_path, seed=0)


# --- model, DP-compatibility and training --------------------------------------------------


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_model_is_opacus_compatible(pack: EcgTask, boston) -> None:
    model = pack.build_model()
    assert ModuleValidator.validate(model, strict=True) == []
    private = GradSampleModule(model)
    inputs, labels = boston.train[:4]
    pack.loss(private(inputs), labels).backward()
    for parameter in model.parameters():
        assert parameter.grad_sample.shape[0] == 4  # per-sample gradients exist


def test_local_training_beats_the_untrained_model(pack: EcgTask, boston) -> None:
    torch.manual_seed(0)
    model = pack.build_model()
    before = pack.evaluate(model, boston.test, CPU)
    assert set(before) == set(pack.metrics)
    settings = TrainSettings(
        local_epochs=10, batch_size=pack.default_batch_size, lr=pack.default_lr, seed=0
    )
    result = train_round(pack, model, boston.train, settings, CPU)
    after = pack.evaluate(model, boston.test, CPU)
    assert result.num_examples == 300 and np.isfinite(result.mean_loss)
    assert after["accuracy"] >= before["accuracy"] + 0.25
    assert after["macro_f1"] > before["macro_f1"] + 0.25
