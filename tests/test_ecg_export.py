"""The built-in ECG sites exported as WFDB site folders load like a hospital's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmed.data.ecg_export import main
from fedmed.data.ecg_readers import LABELS_FILE, read_labelled_folder, to_model_input
from fedmed.data.ecg_synth import CLASS_NAMES, simulate_site
from fedmed.tasks import get_task


def test_an_exported_site_reads_back_as_the_simulated_recordings(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--recordings", "24", "--seed", "3",
                 "--sites", "osaka,leeds"]) == 0  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leeds", "osaka"]
    windows, labels = read_labelled_folder(tmp_path / "osaka", CLASS_NAMES)
    raw = simulate_site("osaka", 24, seed=3)
    np.testing.assert_array_equal(labels, raw.labels)
    expected = np.stack([to_model_input(signal, raw.fs) for signal in raw.signals])
    # WFDB stores 16-bit samples: the standardised windows agree to quantisation error
    np.testing.assert_allclose(windows, expected, atol=0.02)
    assert (tmp_path / "osaka" / LABELS_FILE).read_text().splitlines()[0] == "file,label"


def test_the_pack_splits_an_exported_site_by_class(tmp_path: Path) -> None:
    main(["--out", str(tmp_path), "--recordings", "40", "--sites", "boston"])
    pack = get_task("ecg")
    assert pack.site_names(tmp_path) == ["boston"]
    data = pack.load_site("boston", tmp_path, seed=0)
    assert len(data.train) + len(data.test) == 40
    assert 8 <= len(data.test) <= 12  # the reader's 75 / 25 split, rounded per class
    every_label = np.concatenate([data.train.tensors[1].numpy(), data.test.tensors[1].numpy()])
    simulated = simulate_site("boston", 40, seed=0).labels
    np.testing.assert_array_equal(np.sort(every_label), np.sort(simulated))


def test_too_few_recordings_are_refused(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--recordings", "3"])
    assert "--recordings must be at least 8" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
