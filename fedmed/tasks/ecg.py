"""Single-lead ECG rhythm classification across hospitals.

Data: by default the simulated sites of :mod:`fedmed.data.ecg_synth` (four hospitals whose
recorders differ in sampling rate, lead, polarity, noise, wander and case mix; five classes:
normal, bradycardia, tachycardia, irregular/AF-like, noisy). With ``data_dir`` the pack
reads real recordings instead: one folder per site holding ``labels.csv`` (``file,label``
and optionally ``sampling_rate``, ``lead``) and WFDB, CSV or DICOM-waveform files.

Either way each recording becomes a 5 s, 100 Hz, standardised window through
:func:`fedmed.data.ecg_readers.to_model_input`; :func:`predict_windows` runs inference on
windows made the same way, so training and deployment cannot drift apart.

Settings: ``train-size`` (training windows per built-in site, :mod:`fedmed.tasks.site_size`;
drawn from the same simulated hospital with their own random stream, so the test windows stay
the built-in ones) and ``augment`` (``none``, ``light``, ``strong`` or a comma list): the
training split gives a fresh view of each window per draw — baseline wander, powerline and
muscle noise, amplitude scaling, time shift, lead dropout (:mod:`fedmed.tasks.ecg_augment`,
:mod:`fedmed.tasks.augmentation`); the test split is never augmented.

Model: a small 1-D CNN after the stacked-convolution ECG classifiers (Acharya et al. 2017;
Hannun et al. 2019) — convolution blocks with GroupNorm (BatchNorm is incompatible with
DP-SGD's per-sample gradients), ReLU and max-pooling, then global average pooling and a
linear layer. Its receptive field (~2.2 s) spans several beats, which irregular-rhythm
detection needs; global pooling makes beat counting (the rate classes) easy.

Explainer: 1-D Grad-CAM under the trace (:class:`fedmed.explain.ecg_saliency.EcgSaliency`) of
the last feature map (~31 steps of 0.16 s) before pooling, for each window's predicted class.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fedmed.config import Scalar
from fedmed.data.admission import AdmissionStage
from fedmed.data.ecg_readers import LABELS_FILE, WINDOW_SAMPLES, read_labelled_folder
from fedmed.data.ecg_synth import CLASS_NAMES, SITES, make_site_windows
from fedmed.data.site_folders import site_folders
from fedmed.data.splits import stratified_split
from fedmed.errors import ConfigError, DataError
from fedmed.explain.ecg_saliency import EcgSaliency
from fedmed.tasks import register_task
from fedmed.tasks.augmentation import SETTING, training_split
from fedmed.tasks.base import SiteData, TaskPack, fingerprint_arrays, predict
from fedmed.tasks.ecg_augment import EcgView, ecg_transforms
from fedmed.tasks.site_size import SETTING as TRAIN_SIZE
from fedmed.tasks.site_size import parse_train_size, refuse_with_data_dir

TEST_FRACTION = 0.25
SPLIT_SEED = 42
# The built-in sites are one fixed draw: test splits must not depend on the training seed
# (the task-pack contract), so ``load_site``'s ``seed`` varies training only.
DATA_SEED = 0
# The stream ``train-size`` draws its training windows from: not DATA_SEED, whose draw holds
# the test windows (a sized site never trains on a scene of its test split).
SIZED_TRAIN_SEED = 1
# (out_channels, kernel, pool) of each convolution block; the input has one channel.
BLOCKS = ((16, 7, 2), (32, 7, 2), (32, 7, 2), (64, 5, 2), (64, 5, 1), (64, 5, 1))


Block = tuple[int, int, int]


def conv_features(blocks: tuple[Block, ...]) -> nn.Sequential:
    """Convolution blocks (conv → GroupNorm → ReLU → optional max-pool) over one input channel.

    Shared by :class:`EcgCnn` and the CNN-LSTM of ``fedmed.tasks.ecg_lstm`` so both
    classifiers see the signal through the same kind of front end (and the same
    DP-compatible normalisation).
    """
    layers: list[nn.Module] = []
    in_channels = 1
    for out_channels, kernel, pool in blocks:
        layers += [
            nn.Conv1d(in_channels, out_channels, kernel, padding=kernel // 2),
            nn.GroupNorm(min(8, out_channels // 4), out_channels),
            nn.ReLU(),
        ]
        if pool > 1:
            layers.append(nn.MaxPool1d(pool))
        in_channels = out_channels
    return nn.Sequential(*layers)


def last_layer_name(features: nn.Sequential, prefix: str = "features") -> str:
    """Dotted name of the last layer of ``features``: the feature map Grad-CAM explains."""
    return f"{prefix}.{len(features) - 1}"


class EcgCnn(nn.Module):
    """1-D CNN over a (batch, 1, samples) window → (batch, classes) logits. DP-SGD ready."""

    def __init__(self, num_classes: int = len(CLASS_NAMES), dropout: float = 0.2) -> None:
        super().__init__()
        self.features = conv_features(BLOCKS)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(BLOCKS[-1][0], num_classes),
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(windows))


def predict_windows(model: nn.Module, windows: np.ndarray) -> np.ndarray:
    """Class probabilities (n × classes) for windows made by ``to_model_input``.

    ``windows`` is one window (``WINDOW_SAMPLES``) or a stack (n × ``WINDOW_SAMPLES``).
    """
    batch = np.asarray(windows, dtype=np.float32)
    if batch.ndim == 1:
        batch = batch[None, :]
    if batch.ndim != 2 or batch.shape[1] != WINDOW_SAMPLES:
        raise DataError(
            f"expected windows of {WINDOW_SAMPLES} samples (from to_model_input), "
            f"got shape {np.shape(windows)}"
        )
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)[:, None, :].to(device))
    return torch.softmax(logits, dim=1).cpu().numpy()


@register_task("ecg")
class EcgTask(TaskPack):
    """Five-class rhythm classification of 5 s single-lead ECG windows."""

    metrics = ("accuracy", "macro_f1")
    primary_metric = "accuracy"
    default_sites = tuple(SITES)
    default_lr = 0.05
    default_batch_size = 32
    default_local_epochs = 2
    class_names = CLASS_NAMES
    explainer = EcgSaliency(last_layer_name(conv_features(BLOCKS)), CLASS_NAMES)
    augment: tuple[str, ...] = ()  # get_task configures each instance
    train_size: int | None = None

    def configure(self, settings: Mapping[str, Scalar]) -> None:
        """``augment`` and ``train-size`` (module docstring); the model takes no settings."""
        others = sorted(set(settings) - {SETTING, TRAIN_SIZE})
        if others:
            raise ConfigError(f"task {self.name!r} takes only {SETTING} and {TRAIN_SIZE}; "
                              f"not {', '.join(others)}")  # fmt: skip
        self.augment = ecg_transforms(str(settings.get(SETTING, "none")))
        self.train_size = parse_train_size(settings)

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        if data_dir is None:
            return list(self.default_sites)
        return site_folders(Path(data_dir), LABELS_FILE)

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        refuse_with_data_dir(self.train_size, data_dir)
        if data_dir is None:
            data = make_site_windows(site, DATA_SEED)
            x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
            if self.train_size is not None:
                sized = make_site_windows(site, SIZED_TRAIN_SEED, self.train_size, n_test=0)
                x_train, y_train = sized.x_train, sized.y_train
        else:
            x_train, y_train, x_test, y_test = _load_real_site(
                Path(data_dir) / site, self.admission_stage(site), self.name)
        return SiteData(
            site=site,
            train=training_split(_dataset(x_train, y_train),
                                 EcgView(self.augment) if self.augment else None),
            val=None,
            test=_dataset(x_test, y_test),
            fingerprint=fingerprint_arrays([x_train, y_train, x_test, y_test]),
        )

    def build_model(self) -> nn.Module:
        return EcgCnn(len(self.class_names))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets.long())

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        logits, targets = predict(model, dataset, device)
        predicted = logits.argmax(dim=1).numpy()
        labels = targets.numpy()
        return {
            "accuracy": float((predicted == labels).mean()),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        }


def _dataset(windows: np.ndarray, labels: np.ndarray) -> TensorDataset:
    inputs = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))[:, None, :]
    return TensorDataset(inputs, torch.from_numpy(labels.astype(np.int64)))


def _load_real_site(
    folder: Path, stage: AdmissionStage, task: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Windows of a real site folder through the site's de-id gate (DICOM headers, WFDB
    comments; the batch signed before the windows are returned), split train/test by class
    with a fixed seed."""
    if not folder.is_dir():
        raise DataError(f"{folder}: site folder not found")
    with stage.folder_batch("ecg", task, folder) as gate:
        windows, labels = read_labelled_folder(folder, CLASS_NAMES, gate)
    is_test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    if is_test.all() or not is_test.any():
        raise DataError(f"{folder / LABELS_FILE}: too few recordings ({len(labels)}) to split")
    return windows[~is_test], labels[~is_test], windows[is_test], labels[is_test]
