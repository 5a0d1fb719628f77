"""The outside ECG site of bench/ecg_external.py: every recording carries the class its own
measurement gives, and the pack reads the folder through its data-dir reader."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from fedmed.data.ecg_synth import CLASS_NAMES
from fedmed.tasks import get_task

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench_module():  # noqa: ANN202 - a script of bench/, loaded by path
    sys.path.insert(0, str(BENCH))  # it imports its sibling external_site
    try:
        spec = importlib.util.spec_from_file_location("ecg_external", BENCH / "ecg_external.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_each_class_is_measured_as_itself_and_the_folder_reads(tmp_path: Path) -> None:
    bench = _bench_module()
    rng = np.random.default_rng(1)
    for label in CLASS_NAMES:
        trace, clean = bench.draw(label, rng)
        while not bench.agrees(label, clean):
            trace, clean = bench.draw(label, rng)
        rate, variation = bench.rate_and_variation(clean)
        if label in bench.BANDS:
            low, high = bench.BANDS[label]
            assert low <= rate <= high and variation < bench.IRREGULAR_CV
            others = [name for name in bench.BANDS if name != label]
            assert not any(bench.agrees(name, clean) for name in others)
        if label == "irregular":
            assert variation >= bench.IRREGULAR_CV and not bench.agrees("normal", clean)
        if label == "noisy":
            assert np.std(trace - clean) > 0.1 * np.std(clean)  # the noise is really there
    folder = bench.write_site(tmp_path, per_class=4, seed=0)
    site = get_task("ecg").load_site(bench.SITE, folder, 0)
    labels = np.concatenate([site.train.tensors[1].numpy(), site.test.tensors[1].numpy()])
    assert sorted(labels.tolist()) == sorted(list(range(len(CLASS_NAMES))) * 4)
    rhythm = get_task("ecg-rhythm").load_site(bench.SITE, folder, 0)  # the same export reader
    assert rhythm.fingerprint == site.fingerprint
