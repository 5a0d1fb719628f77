"""ECG rhythm classification from a frozen rhythm front end: the ``ecg`` task made for DP-SGD.

Same sites, readers, splits and metrics as :mod:`fedmed.tasks.ecg` (this pack subclasses
it); only the model differs. Why a second model: under DP-SGD every trained weight takes
noise, and the ``ecg`` CNN's 63 k weights leave it 0.155 below its non-private accuracy at
ε = 1 with 5,000 windows per site (docs/privacy.md). Tramèr & Boneh (2021, "Differentially
private learning needs better features") showed that fixed hand-designed features with a
linear model beat end-to-end DP-SGD networks at small ε; rhythm is the textbook case,
because what separates the classes is known and cheap to measure: the beat rate, whether
the beats come at regular intervals, and whether the trace is dominated by noise.

Front end (:class:`RhythmFeatures`, no trainable weights, fixed at import):

- three FIR filters (``scipy.signal.firwin``, 31 taps at the 100 Hz common rate) split the
  standardised window into a low band (< 5 Hz: wander, P and T waves), the QRS band
  (5–20 Hz) and a high band (> 20 Hz: muscle noise, mains residue); each band's energy
  envelope is its square smoothed over 90 ms (the ``envelopes`` layer, batch × 3 × time);
- **rhythm**: the autocorrelation of the QRS envelope at lags 0.2–2.2 s (RR intervals of
  27–300 bpm), averaged to 50 values — a regular rhythm shows sharp peaks at the RR
  interval and its multiples, an irregular one a flat tail, and the first peak's lag is the
  rate (the Pan–Tompkins idea of an energy envelope, without a peak detector's thresholds);
- **quality**: each band's share of the window's energy and each envelope's peak-to-mean
  ratio (log scale) — noise moves energy out of the QRS band and flattens its peaks.

Only a linear layer over these 56 values trains (285 parameters for five classes). The
front end is part of the model, so training, evaluation, ``predict_windows`` and the
explainer all see raw windows: nothing precomputed can drift from deployment.

Explainer: input × gradient under the trace
(:class:`fedmed.explain.ecg_saliency.EcgGradientSaliency`): Grad-CAM needs a learned feature
map and this model has none — the samples whose change would move the predicted class most
(the beats for a rate class, the noisy stretch for ``noisy``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import firwin
from torch import nn
from torch.nn import functional

from fedmed.data.ecg_readers import COMMON_RATE, WINDOW_SAMPLES
from fedmed.data.ecg_synth import CLASS_NAMES
from fedmed.explain.ecg_saliency import EcgGradientSaliency
from fedmed.tasks import register_task
from fedmed.tasks.ecg import EcgTask

TAPS = 31
LOW_CUT_HZ, HIGH_CUT_HZ = 5.0, 20.0
# The energy envelope's smoothing window: about one QRS complex (90 ms at 100 Hz).
ENVELOPE_SAMPLES = 9
# Autocorrelation lags kept (samples at 100 Hz) and how many neighbours each value averages.
FIRST_LAG, LAG_SPAN, LAG_AVERAGE = 20, 200, 4
BANDS, QRS_BAND = 3, 1
# Scales that bring the log-ratio features to about the range of the autocorrelation (±1).
SHARE_SCALE, PEAK_SCALE = 4.0, 2.0
EPSILON = 1e-6


def band_filters(rate: float = COMMON_RATE) -> torch.Tensor:
    """The BANDS FIR kernels (BANDS × 1 × TAPS): below 5 Hz, 5–20 Hz, above 20 Hz."""
    kernels = (
        firwin(TAPS, LOW_CUT_HZ, fs=rate),
        firwin(TAPS, [LOW_CUT_HZ, HIGH_CUT_HZ], pass_zero=False, fs=rate),
        firwin(TAPS, HIGH_CUT_HZ, pass_zero=False, fs=rate),
    )
    return torch.tensor(np.stack(kernels)[:, None, :], dtype=torch.float32)


class BandEnvelopes(nn.Module):
    """(batch, 1, samples) window → (batch, BANDS, samples) energy envelope of each band."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernels", band_filters())

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        bands = functional.conv1d(windows, self.kernels, padding=TAPS // 2)
        return functional.avg_pool1d(
            bands**2, ENVELOPE_SAMPLES, stride=1, padding=ENVELOPE_SAMPLES // 2,
            count_include_pad=False)  # fmt: skip


def envelope_autocorrelation(envelope: torch.Tensor) -> torch.Tensor:
    """(batch, samples) envelope → (batch, LAG_SPAN / LAG_AVERAGE) normalised autocorrelation
    at lags FIRST_LAG … FIRST_LAG + LAG_SPAN (zero-padded FFT: no wrap-around)."""
    centred = envelope - envelope.mean(dim=1, keepdim=True)
    samples = centred.shape[1]
    spectrum = torch.fft.rfft(centred, n=2 * samples)
    correlation = torch.fft.irfft(spectrum.abs() ** 2, n=2 * samples)[:, :samples]
    correlation = correlation / (correlation[:, :1] + EPSILON)
    kept = correlation[:, FIRST_LAG : FIRST_LAG + LAG_SPAN]
    return kept.reshape(len(kept), LAG_SPAN // LAG_AVERAGE, LAG_AVERAGE).mean(dim=2)


class RhythmFeatures(nn.Module):
    """(batch, 1, samples) window → (batch, FEATURES) rhythm and quality features; no
    trainable weights (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes = BandEnvelopes()

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        envelopes = self.envelopes(windows)
        energy = envelopes.mean(dim=2) + EPSILON
        shares = torch.log(energy / energy.sum(dim=1, keepdim=True)) / SHARE_SCALE
        peaks = torch.log(envelopes.amax(dim=2) / energy + EPSILON) / PEAK_SCALE
        rhythm = envelope_autocorrelation(envelopes[:, QRS_BAND])
        return torch.cat([rhythm, shares, peaks], dim=1)


FEATURES = LAG_SPAN // LAG_AVERAGE + 2 * BANDS  # rhythm, then a share and a peak per band


class EcgRhythmNet(nn.Module):
    """Frozen :class:`RhythmFeatures` → one linear layer → (batch, classes) logits."""

    def __init__(self, num_classes: int = len(CLASS_NAMES)) -> None:
        super().__init__()
        self.features = RhythmFeatures()
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.shape[-1] != WINDOW_SAMPLES:
            raise ValueError(f"expected windows of {WINDOW_SAMPLES} samples, "
                             f"got {windows.shape[-1]}")  # fmt: skip
        return self.head(self.features(windows))


@register_task("ecg-rhythm")
class EcgRhythmTask(EcgTask):
    """The ``ecg`` rhythm task with :class:`EcgRhythmNet` (a linear layer over fixed rhythm
    features) as its model."""

    explainer = EcgGradientSaliency(CLASS_NAMES)
    # A linear layer over features of about unit scale wants a far larger step than the
    # CNN's 0.05: without DP, 1,000 windows per site, lr 0.05 / 0.5 / 2 gave accuracy
    # 0.830 / 0.920 / 0.948 (docs/ecg.md § ecg-rhythm).
    default_lr = 2.0

    def build_model(self) -> nn.Module:
        return EcgRhythmNet(len(self.class_names))
