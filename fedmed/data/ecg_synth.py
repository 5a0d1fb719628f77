"""Simulated multi-site single-lead ECG for rhythm classification (nothing is downloaded).

No labelled real ECG ships in any installable package, so the ``ecg`` task trains on
windows built from ``neurokit2.ecg_simulate`` (ECGSYN, McSharry et al. 2003). ECGSYN
integrates an ODE in Python and costs ~8 ms per simulated second, far too slow to draw
thousands of 5 s windows per site, so it is used once per process to produce one cardiac
cycle per heart rate on a grid (:data:`TEMPLATE_RATES`), with and without a P wave, for each
lead morphology. A window is then assembled by walking any sequence of RR intervals and
reading each interval's cycle from the templates of its heart rate (blended between grid
rates), which keeps ECGSYN's rate-dependent morphology at ~0.3 ms per window.

Classes (:data:`CLASS_NAMES`), labelled by the 5 s window's rhythm:

- 0 ``normal``: sinus rhythm 62–98 bpm with respiratory sinus arrhythmia.
- 1 ``bradycardia``: sinus rhythm 38–57 bpm.
- 2 ``tachycardia``: sinus rhythm 104–160 bpm.
- 3 ``irregular``: AF-like — ventricular rate 60–150 bpm, independent log-normal RR
  intervals (coefficient of variation 15–30 %), no P waves, 4–8 Hz fibrillatory waves.
- 4 ``noisy``: unusable — any rhythm under heavy noise, motion artefacts, lead-off flat
  segments and/or electrode pops.

The rate bands leave small gaps around 60 and 100 bpm so the labels are learnable from
5 s windows. Sites differ where real hospitals differ: the recorder's native sampling
rate, lead and polarity, amplitude gain, broadband noise, baseline wander, mains
interference (50 or 60 Hz), ADC resolution and the case mix (:data:`SITES`). Every
recording is brought to the model's format by ``fedmed.data.ecg_readers.to_model_input``
— the same function applied to real files — so the federation sees the acquisition shift
only through what survives that preprocessing (noise, wander, morphology, polarity).

For the ``ecg-denoise`` task, :func:`make_denoise_pairs` returns (noisy, clean) pairs of
the same sites' cardiac signals at :data:`DENOISE_RATE`: the clean trace is the heart's
signal as the site's lead, polarity and gain show it, and the noisy one adds the four noise
kinds of the MIT-BIH Noise Stress Test tradition — baseline wander, muscle (EMG) noise,
power-line interference and electrode motion — in each site's own mix
(:data:`NOISE_MIXES`), scaled so every window has a known input SNR.

Everything is deterministic for a given ``(site, seed)``.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfiltfilt

from fedmed.data.ecg_readers import WINDOW_SECONDS, to_model_input
from fedmed.errors import ConfigError

CLASS_NAMES = ("normal", "bradycardia", "tachycardia", "irregular", "noisy")
NORMAL, BRADYCARDIA, TACHYCARDIA, IRREGULAR, NOISY = range(len(CLASS_NAMES))
SINUS_RATES = {NORMAL: (62.0, 98.0), BRADYCARDIA: (38.0, 57.0), TACHYCARDIA: (104.0, 160.0)}
IRREGULAR_RATES = (60.0, 150.0)

# ECGSYN's wave amplitudes (P, Q, R, S, T) and per-lead scalings (neurokit2's multilead
# gamma for lead I; ECGSYN's defaults resemble lead II).
ECGSYN_AI = (1.2, -5.0, 30.0, -7.5, 0.75)
LEAD_GAMMA = {"II": (1.0, 1.0, 1.0, 1.0, 1.0), "I": (1.0, 0.1, 1.0, 1.2, 1.0)}
TEMPLATE_RATES = (35.0, 45.0, 55.0, 65.0, 75.0, 90.0, 105.0, 120.0, 140.0, 160.0, 180.0)
TEMPLATE_POINTS = 512
SIMULATION_RATE = 500


@dataclass(frozen=True)
class Acquisition:
    """How one site records ECGs: everything that makes its windows differ from another's.

    ``fs`` native sampling rate (Hz); ``lead`` a key of :data:`LEAD_GAMMA`; ``polarity`` ±1
    (−1: the stored lead is inverted); ``gain`` amplitude scale of the cardiac signal;
    ``noise_mv`` white-noise σ; ``wander_mv`` baseline-wander amplitude; ``mains_hz`` and
    ``mains_mv`` power-line interference; ``adc_uv`` quantisation step; ``class_mix`` the
    site's share of each class (sums to 1). Amplitudes are in mV.
    """

    fs: int
    lead: str
    polarity: int
    gain: float
    noise_mv: float
    wander_mv: float
    mains_hz: float
    mains_mv: float
    adc_uv: float
    class_mix: tuple[float, float, float, float, float]


SITES: dict[str, Acquisition] = {
    # Cardiology referral centre: 500 Hz 12-lead carts, clean signals, many AF patients.
    "boston": Acquisition(
        fs=500,
        lead="II",
        polarity=1,
        gain=1.0,
        noise_mv=0.010,
        wander_mv=0.05,
        mains_hz=60.0,
        mains_mv=0.02,
        adc_uv=1.0,
        class_mix=(0.35, 0.15, 0.15, 0.25, 0.10),
    ),
    # Ambulatory (Holter-like) 250 Hz recorders: strong wander, more noise, coarse ADC.
    "leeds": Acquisition(
        fs=250,
        lead="II",
        polarity=1,
        gain=0.8,
        noise_mv=0.040,
        wander_mv=0.30,
        mains_hz=50.0,
        mains_mv=0.01,
        adc_uv=5.0,
        class_mix=(0.40, 0.20, 0.15, 0.10, 0.15),
    ),
    # Emergency department, 1000 Hz monitors on lead I (smaller R waves); many tachycardias.
    "lyon": Acquisition(
        fs=1000,
        lead="I",
        polarity=1,
        gain=0.6,
        noise_mv=0.015,
        wander_mv=0.10,
        mains_hz=50.0,
        mains_mv=0.005,
        adc_uv=0.5,
        class_mix=(0.30, 0.10, 0.30, 0.20, 0.10),
    ),
    # 360 Hz recorders (MIT-BIH-like) storing an inverted lead; mostly routine sinus ECGs.
    "osaka": Acquisition(
        fs=360,
        lead="II",
        polarity=-1,
        gain=1.4,
        noise_mv=0.020,
        wander_mv=0.08,
        mains_hz=60.0,
        mains_mv=0.03,
        adc_uv=2.5,
        class_mix=(0.45, 0.25, 0.10, 0.10, 0.10),
    ),
}


@dataclass(frozen=True)
class Recordings:
    """Raw simulated recordings of one site: ``signals`` (n × samples, mV) at ``fs`` Hz."""

    signals: np.ndarray
    labels: np.ndarray
    fs: int


@dataclass(frozen=True)
class SiteWindows:
    """Model inputs (n × window samples, float32) and int64 labels of one site's splits."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def acquisition(site: str) -> Acquisition:
    """The acquisition settings of a built-in site; ConfigError naming the known sites."""
    try:
        return SITES[site]
    except KeyError:
        raise ConfigError(f"unknown ecg site {site!r}; sites: {', '.join(SITES)}") from None


def make_site_windows(site: str, seed: int, n_train: int = 300, n_test: int = 100) -> SiteWindows:
    """Train/test model windows for ``site``, each split with the site's exact class mix."""
    setup = acquisition(site)
    rng = _site_rng(site, seed)
    y_train = _labels_for_mix(setup.class_mix, n_train, rng)
    y_test = _labels_for_mix(setup.class_mix, n_test, rng)
    raw = _simulate(setup, np.concatenate([y_train, y_test]), rng)
    windows = np.stack([to_model_input(signal, setup.fs) for signal in raw])
    return SiteWindows(windows[:n_train], y_train, windows[n_train:], y_test)


def simulate_site(site: str, n: int, seed: int) -> Recordings:
    """``n`` raw recordings of ``site`` at its native rate, in mV (before preprocessing)."""
    setup = acquisition(site)
    rng = _site_rng(site, seed)
    labels = _labels_for_mix(setup.class_mix, n, rng)
    return Recordings(_simulate(setup, labels, rng), labels, setup.fs)


DENOISE_RATE = 250
"""Hz of denoising windows: high enough to keep mains (50/60 Hz) and most EMG in band."""
DENOISE_SAMPLES = 512  # ~2 s: two or more beats at every simulated rate
NOISE_KINDS = ("wander", "emg", "powerline", "motion")


@dataclass(frozen=True)
class NoiseMix:
    """One site's noise: ``weights`` the share of noise power of each :data:`NOISE_KINDS`
    entry (sums to 1; jittered per window), ``snr_db`` the range input SNRs are drawn from."""

    weights: tuple[float, float, float, float]
    snr_db: tuple[float, float]


NOISE_MIXES: dict[str, NoiseMix] = {
    # Resting 12-lead carts near imaging equipment: mostly mains, some muscle tremor.
    "boston": NoiseMix(weights=(0.15, 0.25, 0.60, 0.00), snr_db=(0.0, 12.0)),
    # Ambulatory recorders: breathing and walking move the baseline and the electrodes.
    "leeds": NoiseMix(weights=(0.55, 0.10, 0.00, 0.35), snr_db=(-3.0, 9.0)),
    # Emergency department: agitated patients, muscle noise dominates.
    "lyon": NoiseMix(weights=(0.10, 0.65, 0.15, 0.10), snr_db=(-3.0, 9.0)),
    # Bedside monitors with worn electrodes: motion artefacts in the ECG band.
    "osaka": NoiseMix(weights=(0.20, 0.15, 0.10, 0.55), snr_db=(0.0, 12.0)),
}


@dataclass(frozen=True)
class DenoisePairs:
    """Noisy and clean windows (n × :data:`DENOISE_SAMPLES`, float32, mV) and input SNRs (dB)."""

    noisy: np.ndarray
    clean: np.ndarray
    snr_in_db: np.ndarray


def make_denoise_pairs(site: str, n: int, seed: int) -> DenoisePairs:
    """``n`` (noisy, clean) windows of ``site`` at :data:`DENOISE_RATE` (see the module doc).

    Rhythms follow the site's case mix without its ``noisy`` class (every window here is
    noisy by construction); noise power is set from an input SNR drawn per window.
    """
    setup = acquisition(site)
    mix = NOISE_MIXES[site]
    rng = _site_rng(f"denoise-{site}", seed)
    rhythm_mix = np.asarray(setup.class_mix[:NOISY]) / sum(setup.class_mix[:NOISY])
    rhythms = _labels_for_mix(tuple(rhythm_mix), n, rng)
    time = np.arange(DENOISE_SAMPLES) / DENOISE_RATE
    clean = np.empty((n, DENOISE_SAMPLES), dtype=np.float32)
    noisy = np.empty_like(clean)
    snr = rng.uniform(*mix.snr_db, n)
    for row, rhythm in enumerate(rhythms):
        heart = setup.polarity * setup.gain * _heart(setup.lead, int(rhythm), time, rng)
        weights = np.asarray(mix.weights) * rng.uniform(0.5, 1.5, len(NOISE_KINDS))
        weights /= weights.sum()
        noise = sum(
            np.sqrt(weight) * make_noise(kind, DENOISE_SAMPLES, setup.mains_hz, rng)
            for kind, weight in zip(NOISE_KINDS, weights, strict=True)
            if weight > 0
        )
        noise_power = np.mean(heart**2) / 10 ** (snr[row] / 10)
        noise = noise * np.sqrt(noise_power / max(float(np.mean(noise**2)), 1e-12))
        clean[row] = heart
        noisy[row] = heart + noise
    return DenoisePairs(noisy, clean, snr.astype(np.float32))


def make_noise(kind: str, n: int, mains_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of one of :data:`NOISE_KINDS`, ``n`` samples at :data:`DENOISE_RATE`."""
    time = np.arange(n) / DENOISE_RATE
    if kind == "wander":  # respiration and slow electrode drift, 0.05–0.7 Hz
        noise = sum(
            rng.uniform(0.3, 1.0)
            * np.sin(2 * np.pi * rng.uniform(0.05, 0.7) * time + rng.uniform(0, 2 * np.pi))
            for _ in range(3)
        )
    elif kind == "emg":  # broadband muscle activity above ~15 Hz, in bursts of contraction
        sos = butter(4, 15.0, btype="highpass", fs=DENOISE_RATE, output="sos")
        envelope = 0.3 + _smooth(np.abs(rng.normal(0.0, 1.0, n)), DENOISE_RATE // 4)
        noise = sosfiltfilt(sos, rng.normal(0.0, 1.0, n)) * envelope
    elif kind == "powerline":  # mains with slow amplitude modulation and a little jitter
        frequency = mains_hz + rng.normal(0.0, 0.1)
        modulation = 1.0 + 0.2 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * time)
        noise = modulation * np.sin(2 * np.pi * frequency * time + rng.uniform(0, 2 * np.pi))
    elif kind == "motion":  # electrode motion: band-limited walk plus abrupt baseline shifts
        walk = _smooth(np.cumsum(rng.normal(0.0, 1.0, n)), DENOISE_RATE // 25)
        steps = np.zeros(n)
        for start in rng.integers(0, n, int(rng.integers(1, 4))):
            steps[start:] += rng.normal(0.0, 2.0)
        noise = walk - walk.mean() + _smooth(steps, DENOISE_RATE // 50)
    else:
        raise ConfigError(f"unknown noise kind {kind!r}; kinds: {', '.join(NOISE_KINDS)}")
    noise = noise - noise.mean()
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def _smooth(signal: np.ndarray, width: int) -> np.ndarray:
    """Moving average over ``width`` samples, same length."""
    width = max(width, 1)
    return np.convolve(signal, np.ones(width) / width, mode="same")


def _site_rng(site: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(site.encode()), seed])


def _labels_for_mix(mix: tuple[float, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(mix * n)`` labels per class (largest remainder), shuffled."""
    quotas = np.asarray(mix) * n
    counts = np.floor(quotas).astype(int)
    for index in np.argsort(counts - quotas)[: n - counts.sum()]:
        counts[index] += 1
    labels = np.repeat(np.arange(len(mix)), counts)
    rng.shuffle(labels)
    return labels.astype(np.int64)


def _simulate(setup: Acquisition, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n_samples = WINDOW_SECONDS * setup.fs
    time = np.arange(n_samples) / setup.fs
    signals = np.empty((len(labels), n_samples), dtype=np.float32)
    for row, label in enumerate(labels):
        rhythm = int(rng.integers(0, NOISY)) if label == NOISY else int(label)
        heart = _heart(setup.lead, rhythm, time, rng)
        trace = _acquire(setup, heart, time, rng)
        if label == NOISY:
            trace = _corrupt(trace, setup.fs, rng)
        step = setup.adc_uv / 1000.0
        signals[row] = np.round(trace / step) * step
    return signals


def _heart(lead: str, rhythm: int, time: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The clean cardiac signal (mV) of one window for a rhythm class."""
    if rhythm == IRREGULAR:
        rr = _irregular_rr(rng)
        return _assemble(beat_templates(lead, False), rr, time, rng) + _f_waves(time, rng)
    return _assemble(beat_templates(lead, True), _sinus_rr(rhythm, rng), time, rng)


def _sinus_rr(rhythm: int, rng: np.random.Generator) -> np.ndarray:
    """RR intervals (s) with respiratory sinus arrhythmia around a rate from the class band."""
    mean_rr = 60.0 / rng.uniform(*SINUS_RATES[rhythm])
    beats = np.arange(_beats_needed())
    breathing = rng.uniform(0.01, 0.05) * np.sin(
        2 * np.pi * rng.uniform(0.15, 0.35) * beats * mean_rr + rng.uniform(0, 2 * np.pi)
    )
    return mean_rr * (1.0 + breathing + rng.normal(0.0, 0.01, len(beats)))


def _irregular_rr(rng: np.random.Generator) -> np.ndarray:
    """Independent log-normal RR intervals (s): the 'irregularly irregular' rhythm of AF."""
    mean_rr = 60.0 / rng.uniform(*IRREGULAR_RATES)
    spread = rng.uniform(0.15, 0.30)
    rr = mean_rr * rng.lognormal(-(spread**2) / 2, spread, _beats_needed())
    return np.clip(rr, 0.3, 2.0)


def _beats_needed() -> int:
    """Enough intervals to cover a window at the fastest rate (0.3 s) plus a leading one."""
    return int(np.ceil(WINDOW_SECONDS / 0.3)) + 2


def _assemble(
    templates: np.ndarray, rr: np.ndarray, time: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Place one template cycle per RR interval, starting at a random phase of the first."""
    peaks = np.concatenate([[0.0], np.cumsum(rr)]) - rng.uniform(0.0, 1.0) * rr[0]
    beat = np.searchsorted(peaks, time, side="right") - 1
    phase = (time - peaks[beat]) / rr[beat] * TEMPLATE_POINTS
    rate_pos = np.interp(60.0 / rr[beat], TEMPLATE_RATES, np.arange(len(TEMPLATE_RATES)))
    low = np.minimum(rate_pos.astype(int), len(TEMPLATE_RATES) - 2)
    mix = rate_pos - low
    start = phase.astype(int) % TEMPLATE_POINTS
    frac = phase - np.floor(phase)
    end = (start + 1) % TEMPLATE_POINTS

    def at(rate_index: np.ndarray) -> np.ndarray:
        return (1 - frac) * templates[rate_index, start] + frac * templates[rate_index, end]

    amplitude = 1.0 + rng.normal(0.0, 0.03, len(rr))[beat]
    return amplitude * ((1 - mix) * at(low) + mix * at(low + 1))


def _f_waves(time: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fibrillatory baseline waves of AF: 4–8 Hz, frequency-modulated, 0.02–0.08 mV."""
    frequency = rng.uniform(4.0, 8.0) + 0.7 * np.sin(
        2 * np.pi * 0.3 * time + rng.uniform(0, 2 * np.pi)
    )
    phase = 2 * np.pi * np.cumsum(frequency) * (time[1] - time[0])
    shape = np.sin(phase) + 0.4 * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))
    return rng.uniform(0.02, 0.08) * shape


def _acquire(
    setup: Acquisition, heart: np.ndarray, time: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """What the site's recorder makes of the heart's signal: gain, wander, mains, noise."""
    wander = sum(
        setup.wander_mv
        * rng.uniform(0.3, 1.0)
        * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * time + rng.uniform(0, 2 * np.pi))
        for _ in range(2)
    )
    mains = (
        setup.mains_mv
        * rng.uniform(0.5, 1.5)
        * np.sin(2 * np.pi * setup.mains_hz * time + rng.uniform(0, 2 * np.pi))
    )
    noise = rng.normal(0.0, setup.noise_mv, len(time))
    return setup.polarity * setup.gain * heart + wander + mains + noise


def _corrupt(trace: np.ndarray, fs: int, rng: np.random.Generator) -> np.ndarray:
    """Make a recording unusable with one or two artefact kinds."""
    kinds = rng.choice(len(_ARTEFACTS), size=int(rng.integers(1, 3)), replace=False)
    for kind in kinds:
        trace = _ARTEFACTS[kind](trace, fs, rng)
    return trace


def _heavy_noise(trace: np.ndarray, fs: int, rng: np.random.Generator) -> np.ndarray:
    return trace + rng.normal(0.0, rng.uniform(0.3, 1.0), len(trace))


def _motion(trace: np.ndarray, fs: int, rng: np.random.Generator) -> np.ndarray:
    """Electrode motion: a smoothed random walk of 1–3 mV excursions."""
    walk = np.cumsum(rng.normal(0.0, 1.0, len(trace)))
    kernel = np.ones(max(fs // 20, 1)) / max(fs // 20, 1)
    walk = np.convolve(walk - walk.mean(), kernel, mode="same")
    return trace + rng.uniform(1.0, 3.0) * walk / (np.abs(walk).max() + 1e-9)


def _lead_off(trace: np.ndarray, fs: int, rng: np.random.Generator) -> np.ndarray:
    """A 1.5–4 s flat segment at a (possibly saturated) constant level."""
    length = int(rng.uniform(1.5, 4.0) * fs)
    start = int(rng.integers(0, len(trace) - length))
    level = rng.choice([rng.uniform(-0.2, 0.2), rng.choice([-1, 1]) * rng.uniform(2.0, 5.0)])
    trace = trace.copy()
    trace[start : start + length] = level + rng.normal(0.0, 0.002, length)
    return trace


def _electrode_pops(trace: np.ndarray, fs: int, rng: np.random.Generator) -> np.ndarray:
    """3–8 abrupt 1–4 mV jumps decaying over 50–150 ms."""
    pops = np.zeros(len(trace))
    for _ in range(int(rng.integers(3, 9))):
        start = int(rng.integers(0, len(trace)))
        decay = np.exp(-np.arange(len(trace) - start) / (rng.uniform(0.05, 0.15) * fs))
        pops[start:] += rng.choice([-1, 1]) * rng.uniform(1.0, 4.0) * decay
    return trace + pops


_ARTEFACTS: tuple[Callable[[np.ndarray, int, np.random.Generator], np.ndarray], ...] = (
    _heavy_noise,
    _motion,
    _lead_off,
    _electrode_pops,
)


@functools.cache
def beat_templates(lead: str, p_wave: bool) -> np.ndarray:
    """One ECGSYN cycle per :data:`TEMPLATE_RATES` rate (rows), R peak to R peak, in mV.

    Cached per process: this is the only place ``neurokit2.ecg_simulate`` runs (~25 ms per
    rate). ``p_wave=False`` zeroes the P wave's amplitude, as in atrial fibrillation.
    """
    if lead not in LEAD_GAMMA:
        raise ConfigError(f"unknown ecg lead {lead!r}; leads: {', '.join(LEAD_GAMMA)}")
    amplitudes = np.asarray(ECGSYN_AI) * np.asarray(LEAD_GAMMA[lead])
    if not p_wave:
        amplitudes[0] = 0.0
    cycles = [_one_cycle(rate, tuple(amplitudes)) for rate in TEMPLATE_RATES]
    templates = np.stack(cycles)
    templates.flags.writeable = False
    return templates


def _one_cycle(rate: float, amplitudes: tuple[float, ...]) -> np.ndarray:
    """The third R-to-R cycle of a steady ECGSYN run (ECGSYN starts on an R peak)."""
    import neurokit2 as nk  # deferred: a 1–2 s import, needed only to build the templates

    rr = 60.0 / rate
    ecg = np.asarray(
        nk.ecg_simulate(
            duration=4 * rr,
            sampling_rate=SIMULATION_RATE,
            heart_rate=rate,
            heart_rate_std=0,
            noise=0,
            random_state=0,
            ai=amplitudes,
        )
    )
    time = np.arange(len(ecg)) / SIMULATION_RATE
    cycle = np.interp((2 + np.arange(TEMPLATE_POINTS) / TEMPLATE_POINTS) * rr, time, ecg)
    return cycle - np.median(cycle)
