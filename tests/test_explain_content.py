"""Explanations that point at the right place, not only PNGs that exist.

Both tests train a small model briefly on synthetic data whose abnormality is at a known place,
then ask the pack's declared explainer where it looked:

- **Pointing game** (Zhang et al., 2018) for ``imaging-cls``'s Grad-CAM: on the academic site's
  positive test images the heatmap's maximum must fall on the large lesion (the connected
  object of at least ``LARGE_AREA`` pixels of the image's mask, the object that makes the label
  positive), allowing :data:`POINTING_TOLERANCE` pixel. Measured: 0.99 after four epochs (0.94
  with no tolerance) against 0.35 for the untrained model and a lesion that covers about a
  quarter of the image.
- **ECG saliency** on windows of the ``ecg`` CNN: half of boston's sinus-rhythm windows get a
  1 s burst of noise (an artefact, standardised amplitude 1) at a random, recorded position,
  and a two-class :class:`~fedmed.tasks.ecg.EcgCnn` learns to flag them. The saliency peak of
  a flagged window must lie within the burst (± 0.1 s), and the share of saliency inside it
  must be well above the burst's share of the window (0.2). Measured after three epochs: peak
  inside for 1.00 of the windows, mean share 0.64. An untrained CNN already scores 0.78 and
  0.43 — Grad-CAM of a random convolution net follows the input's energy, which a burst raises
  — so the floors are set above that baseline, not only above chance.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import TensorDataset

from fedmed.data.ecg_readers import COMMON_RATE, WINDOW_SAMPLES
from fedmed.data.ecg_synth import make_site_windows
from fedmed.data.imaging_synth import LARGE_AREA, make_site_images
from fedmed.explain.ecg_saliency import EcgSaliency
from fedmed.explain.gradcam import GradCam
from fedmed.tasks.ecg import EcgCnn, EcgTask
from fedmed.tasks.imaging_cls import ImagingClassificationTask
from fedmed.training.loop import TrainSettings, train_round

CPU = torch.device("cpu")
POINTING_TOLERANCE = 1  # pixels: Grad-CAM's 4 × 4 feature map is upsampled to 32 × 32
POINTING_FLOOR = 0.8  # measured 0.99
BURST = int(COMMON_RATE)  # samples: a 1 s artefact
BURST_TOLERANCE = int(0.1 * COMMON_RATE)
SALIENCY_PEAK_FLOOR = 0.9  # measured 1.00 (untrained 0.78, chance ~0.24)
SALIENCY_SHARE_FLOOR = 0.5  # measured 0.64 (untrained 0.43, chance 0.2)


def large_lesion(mask: np.ndarray) -> np.ndarray:
    """The pixels of the objects of ``mask`` large enough to make the image positive."""
    objects, count = ndimage.label(mask > 0)
    areas = ndimage.sum(mask > 0, objects, range(1, count + 1))
    return np.isin(objects, 1 + np.flatnonzero(np.asarray(areas) >= LARGE_AREA))


def pointing_score(explainer: GradCam, model: torch.nn.Module, images: np.ndarray,
                   masks: np.ndarray) -> float:
    """Share of images whose heatmap maximum lies on (or within the tolerance of) the lesion."""
    heatmaps, _ = explainer.maps(model, torch.from_numpy(images.astype(np.float32))[:, None])
    hits = []
    for heatmap, mask in zip(heatmaps, masks, strict=True):
        lesion = ndimage.binary_dilation(large_lesion(mask), iterations=POINTING_TOLERANCE)
        hits.append(bool(lesion[np.unravel_index(np.argmax(heatmap), heatmap.shape)]))
    return float(np.mean(hits))


def test_gradcam_points_at_the_lesion_on_positive_images() -> None:
    pack = ImagingClassificationTask()
    assert isinstance(pack.explainer, GradCam)
    data = pack.load_site("academic", None, 0)
    test = make_site_images("academic", 0).test  # the pack's test split, with the masks
    positive = np.flatnonzero(test.labels == 1)
    assert len(positive) >= 50 and all(large_lesion(test.masks[i]).any() for i in positive)
    torch.manual_seed(0)
    model = pack.build_model()
    untrained = pointing_score(pack.explainer, model, test.images[positive], test.masks[positive])
    settings = TrainSettings(local_epochs=4, batch_size=pack.default_batch_size,
                             lr=pack.default_lr, seed=0)
    train_round(pack, model, data.train, settings, CPU)
    score = pointing_score(pack.explainer, model, test.images[positive], test.masks[positive])
    print(f"pointing game: {score:.3f} trained, {untrained:.3f} untrained "
          f"({len(positive)} positive images)")
    assert score >= POINTING_FLOOR
    assert score >= untrained + 0.3  # it is the training that points the map at the lesion


def with_bursts(windows: np.ndarray, rng: np.random.Generator
                ) -> tuple[TensorDataset, np.ndarray, np.ndarray]:
    """``windows`` with a noise burst in a random half; the dataset, labels and burst starts."""
    inputs = windows.astype(np.float32)
    labels = np.zeros(len(inputs), np.int64)
    labels[: len(inputs) // 2] = 1
    rng.shuffle(labels)
    starts = rng.integers(0, WINDOW_SAMPLES - BURST, len(inputs))
    for index in np.flatnonzero(labels):
        inputs[index, starts[index] : starts[index] + BURST] += rng.normal(0.0, 1.0, BURST)
    dataset = TensorDataset(torch.from_numpy(inputs)[:, None], torch.from_numpy(labels))
    return dataset, labels, starts


def test_ecg_saliency_concentrates_on_the_abnormal_segment() -> None:
    windows = make_site_windows("boston", 0)
    rng = np.random.default_rng(0)
    train, _, _ = with_bursts(windows.x_train, rng)
    test, labels, starts = with_bursts(windows.x_test, rng)
    pack = EcgTask()  # its loss (cross-entropy) and its explainer's layer, with two classes
    assert isinstance(pack.explainer, EcgSaliency)
    explainer = EcgSaliency(pack.explainer.layer, ("clean", "artefact"))
    torch.manual_seed(0)
    model = EcgCnn(num_classes=2)
    train_round(pack, model, train, TrainSettings(local_epochs=3, batch_size=32, lr=0.05, seed=0),
                CPU)
    flagged = np.flatnonzero(labels == 1)
    saliency, predicted, _ = explainer.maps(model, test.tensors[0][flagged])
    peaks = saliency.argmax(axis=1)
    begin, end = starts[flagged], starts[flagged] + BURST
    inside = (peaks >= begin - BURST_TOLERANCE) & (peaks < end + BURST_TOLERANCE)
    share = [row[a:b].sum() / row.sum() for row, a, b in zip(saliency, begin, end, strict=True)]
    print(f"ecg saliency: peak in the burst {inside.mean():.3f}, mean share "
          f"{np.mean(share):.3f}, flagged {np.mean(predicted == 1):.3f} of {len(flagged)}")
    assert np.mean(predicted == 1) >= 0.7  # the model learnt the artefact
    assert inside.mean() >= SALIENCY_PEAK_FLOOR
    assert np.mean(share) >= SALIENCY_SHARE_FLOOR

