"""The ECG packs' federated models scored on recordings their generator did not write.

Usage::

    python bench/ecg_external.py [--tasks ecg,ecg-rhythm] [--size 1000] [--epsilons 1,inf]
                                 [--per-class 40] [--seed 0] [--out .fedmed/bench/ecg-external]

Why: the built-in test windows come from the sites' own generator (``fedmed.data.ecg_synth``:
ECGSYN beat templates assembled at drawn RR intervals, its own noise models), so a score on
them says the plumbing works, not that a rhythm model reads other recordings. This bench
writes an outside site instead, with neurokit2's simulators and distortion used directly —
none of fedmed's generator code:

- ``normal`` / ``bradycardia`` / ``tachycardia``: neurokit2's ``simple`` method (a wavelet
  beat model, not ECGSYN) at a drawn rate;
- ``irregular``: ECGSYN with a large heart-rate standard deviation (``heart_rate_std`` 30
  bpm: RR intervals that wander beat to beat through ECGSYN's own RR process, not the
  generator's independent log-normal draws; P waves kept, no fibrillatory waves);
- ``noisy``: a ``simple`` normal rhythm through ``neurokit2.signal_distort`` (Laplace noise,
  powerline, linear drift, artefact bursts).

Each recording is labelled by **measuring** it with neurokit2's own R-peak detector on the
clean trace — median rate for the three sinus classes (the class bands of
``fedmed.data.ecg_synth``: 62–98, 38–57, 104–160 bpm), RR coefficient of variation ≥ 0.15
for ``irregular`` — and redrawn until the measurement agrees with the class it was drawn
for, so no window carries a label its trace contradicts. Recordings are 6 s at 200 Hz (no
built-in site records at 200 Hz), written as CSV files with ``labels.csv`` — the pack's
data-dir format — and read through the pack's reader and de-id gate.

The loop (training, the untrained first row, scoring) is ``bench/external_site.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import neurokit2 as nk
import numpy as np
import pandas as pd
import torch
from external_site import REPO, compare_from, parser
from torch.utils.data import Dataset

from fedmed.data.ecg_readers import LABELS_FILE
from fedmed.data.ecg_synth import CLASS_NAMES
from fedmed.inference import predict

SITE = "external"
RATE = 200
SECONDS = 6
# The class bands of fedmed.data.ecg_synth (bpm), and the irregular class's RR variation.
BANDS = {"normal": (62, 98), "bradycardia": (38, 57), "tachycardia": (104, 160)}
IRREGULAR_CV = 0.15
MAX_DRAWS = 50

Recording = tuple[np.ndarray, np.ndarray]  # (trace to write, clean trace to measure)


def rate_and_variation(clean: np.ndarray) -> tuple[float, float]:
    """Median heart rate (bpm) and RR coefficient of variation by neurokit2's R-peak detector."""
    _, info = nk.ecg_peaks(nk.ecg_clean(clean, sampling_rate=RATE), sampling_rate=RATE)
    rr = np.diff(info["ECG_R_Peaks"]) / RATE
    if len(rr) < 2:
        return 0.0, 0.0
    return float(60.0 / np.median(rr)), float(np.std(rr) / np.mean(rr))


def _simple(rate: float, seed: int) -> np.ndarray:
    return nk.ecg_simulate(duration=SECONDS, sampling_rate=RATE, heart_rate=rate,
                           method="simple", random_state=seed)


def draw(label: str, rng: np.random.Generator) -> Recording:
    """One recording of class ``label`` (not yet checked)."""
    seed = int(rng.integers(2**31))
    if label in BANDS:
        low, high = BANDS[label]
        trace = _simple(float(rng.uniform(low, high)), seed)
        return trace, trace
    if label == "irregular":
        trace = nk.ecg_simulate(duration=SECONDS, sampling_rate=RATE,
                                heart_rate=float(rng.uniform(75, 110)), heart_rate_std=30,
                                method="ecgsyn", random_state=seed)
        return trace, trace
    clean = _simple(float(rng.uniform(*BANDS["normal"])), seed)
    noisy = nk.signal_distort(
        clean, sampling_rate=RATE, noise_amplitude=float(rng.uniform(0.4, 1.0)),
        noise_frequency=[5, 20, 40], powerline_amplitude=float(rng.uniform(0.1, 0.4)),
        artifacts_amplitude=float(rng.uniform(0.5, 1.5)), artifacts_number=int(rng.integers(2, 6)),
        linear_drift=bool(rng.integers(2)), random_state=seed, silent=True)
    return noisy, clean


def agrees(label: str, clean: np.ndarray) -> bool:
    """Whether the measured rhythm of ``clean`` belongs to ``label``'s class."""
    rate, variation = rate_and_variation(clean)
    if label in BANDS:
        low, high = BANDS[label]
        return low <= rate <= high and variation < IRREGULAR_CV
    if label == "irregular":
        return variation >= IRREGULAR_CV and 40 <= rate <= 160
    return BANDS["normal"][0] <= rate <= BANDS["normal"][1]  # noisy: a normal rhythm beneath


def measured_recording(label: str, rng: np.random.Generator) -> np.ndarray:
    """A recording of ``label`` whose measurement agrees with it (module docstring)."""
    for _ in range(MAX_DRAWS):
        trace, clean = draw(label, rng)
        if agrees(label, clean):
            return trace
    raise RuntimeError(f"no {label} recording agreed with its measurement in {MAX_DRAWS} draws")


def write_site(folder: Path, per_class: int, seed: int) -> Path:
    """``folder``/SITE: ``per_class`` CSV recordings of each class and ``labels.csv``."""
    site = folder / SITE
    site.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for label in CLASS_NAMES:
        for index in range(per_class):
            name = f"{label}-{index:03d}.csv"
            trace = measured_recording(label, rng)
            pd.DataFrame({"II": trace}).to_csv(site / name, index=False, float_format="%.5f")
            rows.append({"file": name, "label": label, "sampling_rate": RATE})
    pd.DataFrame(rows).to_csv(site / LABELS_FILE, index=False)
    return folder


def recall_per_class(model: torch.nn.Module, recordings: Dataset) -> str:
    """``recall: normal 1.00, bradycardia …`` — the share of each class's outside recordings
    the model names correctly."""
    logits, targets = predict(model, recordings, torch.device("cpu"))
    predicted, truth = logits.argmax(dim=1).numpy(), targets.numpy()
    shares = (f"{name} {(predicted[truth == index] == index).mean():.2f}"
              for index, name in enumerate(CLASS_NAMES))
    return "recall: " + ", ".join(shares)


def main(argv: list[str] | None = None) -> int:
    options = parser(__doc__.split("\n\n")[0], "ecg,ecg-rhythm", "windows")
    options.add_argument("--per-class", type=int, default=40)
    options.add_argument("--out", type=Path, default=REPO / ".fedmed" / "bench" / "ecg-external")
    args = options.parse_args(argv)
    folder = write_site(args.out, args.per_class, args.seed)
    compare_from(args, folder, SITE, ("accuracy", "macro_f1"), recall_per_class)
    return 0


if __name__ == "__main__":
    sys.exit(main())
