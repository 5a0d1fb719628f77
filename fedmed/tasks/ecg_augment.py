"""The ECG packs' augmentation: small NumPy transforms of a model window.

MONAI has no ECG (or any 1-D physiological-signal) transforms, so these are written here:
each takes a window as the model reads it — (leads × samples), :data:`RATE` Hz, standardised
by :func:`fedmed.data.ecg_readers.to_model_input`, so amplitudes are in units of the window's
standard deviation — and a NumPy generator, and returns a new window of the same shape and
dtype. What each name of the ``augment`` setting (:mod:`fedmed.tasks.augmentation`) applies,
each with probability :data:`PROB` per view:

- ``wander``: baseline wander, a sinusoid of 0.05–0.5 Hz (breathing, electrode drift);
- ``powerline``: mains interference of 50 or 60 Hz. At the window's 100 Hz a 50 Hz hum sits at
  Nyquist (an alternating ±a sequence) and 60 Hz aliases to 40 Hz: what is left of mains in a
  resampled recording whose anti-alias filter let some of it through;
- ``muscle``: muscle (EMG) noise as white Gaussian noise — EMG's band (20 Hz and up) covers
  the whole 0–50 Hz band a 100 Hz window holds, so band-limiting adds nothing here;
- ``scale``: amplitude scaling by 0.8–1.2 (electrode contact, gain calibration);
- ``shift``: a circular time shift of up to ±1 s. Circular, not padded: the rhythm classes
  are read from the rate, and zero padding would remove beats from the window;
- ``dropout``: lead dropout. With several leads one whole lead is zeroed (an electrode off);
  the packs' windows are single-lead, so there a segment of up to 0.3 s is zeroed instead (a
  short loss of contact), which keeps the rest of the rhythm readable.

``light`` is ``scale``, ``shift`` and ``wander``: transforms a clean record of every rhythm
survives. The noise transforms (``powerline``, ``muscle``) and ``dropout`` are in ``strong``
only, with small amplitudes, because the ECG packs have a ``noisy`` class: heavy noise added to
a normal window would make it look like a record of that class under the wrong label.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedmed.data.ecg_readers import COMMON_RATE
from fedmed.tasks.augmentation import choose_transforms

RATE = COMMON_RATE
PROB = 0.5
TRANSFORMS = ("wander", "powerline", "muscle", "scale", "shift", "dropout")
LIGHT = ("wander", "scale", "shift")
WANDER_HZ = (0.05, 0.5)
WANDER_AMPLITUDE = 0.3  # at most, in window standard deviations
POWERLINE_AMPLITUDE = 0.1
MUSCLE_SIGMA = 0.1
SCALE = (0.8, 1.2)
MAX_SHIFT_SECONDS = 1.0
MAX_DROPOUT_SECONDS = 0.3

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _times(window: np.ndarray) -> np.ndarray:
    return np.arange(window.shape[-1]) / RATE


def baseline_wander(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slow sinusoid added to every lead (random frequency, phase and amplitude)."""
    hz, phase = rng.uniform(*WANDER_HZ), rng.uniform(0, 2 * np.pi)
    drift = rng.uniform(0, WANDER_AMPLITUDE) * np.sin(2 * np.pi * hz * _times(window) + phase)
    return (window + drift).astype(window.dtype)


def powerline(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """50 or 60 Hz mains hum, sampled at the window's rate (module docstring)."""
    hz, phase = rng.choice((50.0, 60.0)), rng.uniform(0, 2 * np.pi)
    hum = rng.uniform(0, POWERLINE_AMPLITUDE) * np.sin(2 * np.pi * hz * _times(window) + phase)
    return (window + hum).astype(window.dtype)


def muscle_noise(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise of a random level up to :data:`MUSCLE_SIGMA`."""
    sigma = rng.uniform(0, MUSCLE_SIGMA)
    return (window + rng.normal(0, sigma, size=window.shape)).astype(window.dtype)


def amplitude_scale(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every lead times one factor in :data:`SCALE`."""
    return (window * rng.uniform(*SCALE)).astype(window.dtype)


def time_shift(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A circular shift of up to ±:data:`MAX_SHIFT_SECONDS` along time."""
    limit = int(MAX_SHIFT_SECONDS * RATE)
    return np.roll(window, int(rng.integers(-limit, limit + 1)), axis=-1)


def lead_dropout(window: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One lead zeroed; a single lead loses a segment of up to 0.3 s instead."""
    out = window.copy()
    if out.ndim > 1 and out.shape[0] > 1:
        out[int(rng.integers(out.shape[0]))] = 0
        return out
    length = int(rng.integers(1, int(MAX_DROPOUT_SECONDS * RATE) + 1))
    start = int(rng.integers(0, out.shape[-1] - length + 1))
    out[..., start:start + length] = 0
    return out


CATALOGUE: dict[str, Transform] = {
    "wander": baseline_wander,
    "powerline": powerline,
    "muscle": muscle_noise,
    "scale": amplitude_scale,
    "shift": time_shift,
    "dropout": lead_dropout,
}


def ecg_transforms(value: str) -> tuple[str, ...]:
    """The transform names an ``augment`` value gives an ECG pack (ConfigError if bad)."""
    return choose_transforms(value, TRANSFORMS, LIGHT)


class EcgView:
    """One augmented view of a (leads × samples) window tensor per call; the label is kept."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.steps = [CATALOGUE[name] for name in names]

    def __call__(
        self, window: torch.Tensor, target: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(seed)
        signal = window.numpy()
        for step in self.steps:
            if rng.random() < PROB:
                signal = step(signal, rng)
        return torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32)), target
