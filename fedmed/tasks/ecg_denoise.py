"""ECG denoising across hospitals whose recordings suffer different noise.

Data: (noisy, clean) window pairs of the four simulated ECG sites
(:func:`fedmed.data.ecg_synth.make_denoise_pairs`): ~2 s at 250 Hz, in millivolts, each
site with its own mix of baseline wander, muscle (EMG) noise, power-line interference and
electrode motion and its own range of input SNRs. A federation is useful exactly because
no single site sees every kind of noise. With ``data_dir`` the pack reads real pairs
instead: one folder per site holding ``pairs.npz`` with float arrays ``noisy`` and ``clean``
(windows × :data:`~fedmed.data.ecg_synth.DENOISE_SAMPLES` samples at
:data:`~fedmed.data.ecg_synth.DENOISE_RATE` Hz, mV) — e.g. clean records with noise-stress
recordings added, as in the MIT-BIH Noise Stress Test Database.

Model: a fully convolutional denoising autoencoder after Chiang et al. (2019, "Noise
reduction in ECG signals using fully convolutional denoising autoencoders", IEEE Access):
strided 1-D convolutions encode, upsampling and convolutions decode, no dense layer, so the
same weights apply at every position. Two changes make it trainable with DP-SGD:
GroupNorm instead of BatchNorm, and linear upsampling + convolution instead of transposed
convolutions, which Opacus gives no per-sample gradients for.

Scale: every pair is divided by the noisy window's standard deviation (known at inference
too; :func:`denoise_windows` applies it and undoes it). Sites differ in amplifier gain and
noise level, and in millivolts a plain MSE let the loudest windows dominate: SGD at a rate
that trains one site diverged at another. Scaling both windows by the same factor leaves
every SNR unchanged, so the metrics mean the same thing in mV.

Loss: mean squared error (in the scaled units). Metrics: ``snr_improvement_db`` (primary;
output SNR minus input SNR, averaged over test windows; higher is better, 0 for a model that
returns its input) and ``rmse`` (root mean squared error per window, averaged, in units of
the noisy window's standard deviation so that sites are comparable; lower is better).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fedmed.data.ecg_synth import DENOISE_RATE, DENOISE_SAMPLES, SITES, make_denoise_pairs
from fedmed.data.site_folders import site_folders
from fedmed.errors import DataError
from fedmed.tasks import register_task
from fedmed.tasks.base import SiteData, TaskPack, fingerprint_arrays

PAIRS_FILE = "pairs.npz"
N_TRAIN = 300
N_TEST = 100
TEST_FRACTION = 0.25
SPLIT_SEED = 42
# One fixed draw of the built-in sites: the test split never depends on the training seed.
DATA_SEED = 0
# (out_channels, kernel) of each encoder block; each halves the length (512 → 64).
ENCODER = ((16, 9), (16, 9), (32, 9))
POWER_FLOOR = 1e-12  # keeps the SNR of a perfect reconstruction finite
MIN_SCALE = 1e-6  # a flat (lead-off) window is left unscaled rather than divided by ~0


class FcnDae(nn.Module):
    """(batch, 1, samples) scaled noisy windows → (batch, 1, samples) denoised, same units."""

    def __init__(self, encoder: tuple[tuple[int, int], ...] = ENCODER) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for out_channels, kernel in encoder:
            layers += _block(in_channels, out_channels, kernel, stride=2)
            in_channels = out_channels
        for out_channels, kernel in reversed(encoder):
            layers.append(nn.Upsample(scale_factor=2, mode="linear", align_corners=False))
            layers += _block(in_channels, out_channels, kernel, stride=1)
            in_channels = out_channels
        layers.append(nn.Conv1d(in_channels, 1, encoder[0][1], padding=encoder[0][1] // 2))
        self.net = nn.Sequential(*layers)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return self.net(noisy)


def _block(in_channels: int, out_channels: int, kernel: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv1d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2),
        nn.GroupNorm(min(8, out_channels // 4), out_channels),
        nn.ReLU(),
    ]


def snr_db(clean: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """Per-window SNR (dB) of ``estimate`` against ``clean`` (both windows × samples)."""
    signal = np.sum(np.square(clean, dtype=np.float64), axis=-1)
    error = np.sum(np.square(estimate - clean, dtype=np.float64), axis=-1)
    return 10.0 * np.log10(np.maximum(signal, POWER_FLOOR) / np.maximum(error, POWER_FLOOR))


def denoise_scores(noisy: np.ndarray, denoised: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """``snr_improvement_db`` and ``rmse`` of ``denoised`` (all windows × samples, one unit)."""
    if not noisy.shape == denoised.shape == clean.shape or noisy.ndim != 2 or not len(noisy):
        raise ValueError(
            f"expected equal (windows, samples) arrays, got {noisy.shape}, {denoised.shape}, "
            f"{clean.shape}"
        )
    improvement = snr_db(clean, denoised) - snr_db(clean, noisy)
    rmse = np.sqrt(np.mean(np.square(denoised - clean, dtype=np.float64), axis=-1))
    return {"snr_improvement_db": float(improvement.mean()), "rmse": float(rmse.mean())}


@register_task("ecg-denoise")
class EcgDenoiseTask(TaskPack):
    """Denoise ~2 s single-lead ECG windows; scored by SNR improvement and RMSE."""

    metrics = ("snr_improvement_db", "rmse")
    primary_metric = "snr_improvement_db"
    default_sites = tuple(SITES)
    default_lr = 0.01  # 0.03 already diverges in the first epoch at every site
    default_batch_size = 32
    default_local_epochs = 2

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        if data_dir is None:
            return list(self.default_sites)
        return site_folders(Path(data_dir), PAIRS_FILE)

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        if data_dir is None:
            pairs = make_denoise_pairs(site, N_TRAIN + N_TEST, DATA_SEED)
            noisy, clean = pairs.noisy, pairs.clean
            is_test = np.arange(len(noisy)) >= N_TRAIN
        else:
            noisy, clean = read_pairs(Path(data_dir) / site / PAIRS_FILE)
            is_test = np.random.default_rng(SPLIT_SEED).random(len(noisy)) < TEST_FRACTION
            if is_test.all() or not is_test.any():
                raise DataError(
                    f"{Path(data_dir) / site / PAIRS_FILE}: too few windows ({len(noisy)}) to split"
                )
        train = (noisy[~is_test], clean[~is_test])
        test = (noisy[is_test], clean[is_test])
        return SiteData(
            site=site,
            train=_dataset(*train),
            val=None,
            test=_dataset(*test),
            fingerprint=fingerprint_arrays([*train, *test]),
        )

    def build_model(self) -> nn.Module:
        return FcnDae()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(outputs, targets)

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        model.eval()
        noisy, denoised, clean = [], [], []
        with torch.no_grad():
            for inputs, targets in DataLoader(dataset, batch_size=256, shuffle=False):
                denoised.append(model(inputs.to(device)).cpu()[:, 0].numpy())
                noisy.append(inputs[:, 0].numpy())
                clean.append(targets[:, 0].numpy())
        return denoise_scores(
            np.concatenate(noisy), np.concatenate(denoised), np.concatenate(clean)
        )


def read_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``noisy`` and ``clean`` float32 arrays of a ``pairs.npz``; DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: pairs file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"noisy", "clean"} - set(archive.files)
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(sorted(missing))}")
            noisy, clean = archive["noisy"], archive["clean"]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    expected = f"(windows, {DENOISE_SAMPLES}) numeric arrays of equal shape"
    if noisy.shape != clean.shape or noisy.ndim != 2 or noisy.shape[1] != DENOISE_SAMPLES:
        raise DataError(f"{path}: expected {expected}, got {noisy.shape} and {clean.shape}")
    if not (np.issubdtype(noisy.dtype, np.number) and np.issubdtype(clean.dtype, np.number)):
        raise DataError(f"{path}: expected {expected}, got {noisy.dtype} and {clean.dtype}")
    if not (np.isfinite(noisy).all() and np.isfinite(clean).all()):
        raise DataError(f"{path}: contains NaN or infinite samples")
    return noisy.astype(np.float32), clean.astype(np.float32)


def window_scale(noisy: np.ndarray) -> np.ndarray:
    """Per-window scale (windows × 1): the noisy window's standard deviation, floored."""
    return np.maximum(np.std(noisy, axis=-1, keepdims=True), MIN_SCALE)


def denoise_windows(model: nn.Module, noisy: np.ndarray) -> np.ndarray:
    """Denoise windows in mV (one window or windows × samples) the way the pack trains."""
    batch = np.asarray(noisy, dtype=np.float32)
    if batch.ndim == 1:
        batch = batch[None, :]
    if batch.ndim != 2 or batch.shape[1] != DENOISE_SAMPLES:
        raise DataError(
            f"expected windows of {DENOISE_SAMPLES} samples at {DENOISE_RATE} Hz, "
            f"got shape {np.shape(noisy)}"
        )
    scale = window_scale(batch)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(batch / scale)[:, None, :].to(device))
    return out[:, 0].cpu().numpy() * scale


def _dataset(noisy: np.ndarray, clean: np.ndarray) -> TensorDataset:
    scale = window_scale(noisy)

    def channel(windows: np.ndarray) -> torch.Tensor:
        scaled = np.ascontiguousarray(windows / scale, dtype=np.float32)
        return torch.from_numpy(scaled)[:, None, :]

    return TensorDataset(channel(noisy), channel(clean))
