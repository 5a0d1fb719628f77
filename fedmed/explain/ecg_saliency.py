"""1-D Grad-CAM saliency for the ECG rhythm classifiers, drawn over the trace as PNG.

A cardiologist checking a federated rhythm model wants to see which stretch of the
recording drove the call — the irregular RR intervals, a run of fast beats, an artefact.
Grad-CAM (Selvaraju et al., 2017) weights the last convolutional feature map by the gradient
of the predicted class's logit; MONAI's :class:`monai.visualize.GradCAM` handles 1-D
convolutions as they are (its up-sampler picks linear interpolation for one spatial
dimension), so it is used here as for images (:mod:`fedmed.explain.gradcam`), with that
module's :func:`~fedmed.explain.gradcam.unit_range` post-processing instead of MONAI's
default, which would draw the most important samples coldest.

The explained layer is the pack's ``gradcam_layer`` (``ecg``: the CNN's last feature map;
``ecg-lstm``: the convolutional features the LSTM reads, whose gradients pass through the
recurrence). The map explains each window's *predicted* class. The model is deep-copied
first: MONAI leaves its hooks registered, and a node may go on training or wrapping the
same model (Opacus adds its own hooks) after writing explanations.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from fedmed.data.ecg_readers import COMMON_RATE
from fedmed.errors import ConfigError
from fedmed.explain.gradcam import unit_range
from fedmed.tasks.base import SiteData, TaskPack

SALIENCY_ALPHA = 0.35


def save_saliency(
    pack: TaskPack, model: nn.Module, site_data: SiteData, out_dir: str | Path, n: int = 4
) -> list[Path]:
    """Saliency plots of the first ``n`` test windows of a site; returns the PNG paths.

    Files are ``saliency-<site>-<index>.png`` in ``out_dir`` (created if needed); each title
    gives the true class, the predicted class and its probability.
    """
    layer = getattr(pack, "gradcam_layer", None)
    class_names = getattr(pack, "class_names", None)
    if not layer or not class_names:
        raise ConfigError(
            f"task {pack.name!r} is not an ECG classifier with a Grad-CAM layer (gradcam_layer)"
        )
    items = [site_data.test[index] for index in range(min(n, len(site_data.test)))]  # type: ignore[arg-type]
    if not items:
        return []
    windows = torch.stack([inputs for inputs, _ in items])
    saliency, predicted, probability = saliency_maps(model, layer, windows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (_, label) in enumerate(items):
        path = out / f"saliency-{site_data.site}-{index}.png"
        title = (
            f"{site_data.site} #{index}: true {class_names[int(label)]}, predicted "
            f"{class_names[predicted[index]]} (p={probability[index]:.2f})"
        )
        plot_saliency(windows[index, 0].numpy(), saliency[index], title, path)
        paths.append(path)
    return paths


def saliency_maps(
    model: nn.Module, layer: str, windows: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM of each window's predicted class.

    ``windows`` is (n, 1, samples). Returns saliency in ``[0, 1]`` (n × samples), the
    predicted class indices and their softmax probabilities.
    """
    from monai.visualize import GradCAM  # MONAI's import is slow: only when explaining

    explained = copy.deepcopy(model).cpu().eval()
    cam = GradCAM(nn_module=explained, target_layers=layer, postprocessing=unit_range)
    saliency = cam(x=windows).detach()[:, 0].numpy()  # class_idx=None: the predicted class
    with torch.no_grad():
        probabilities = torch.softmax(explained(windows), dim=1)
    best = probabilities.max(dim=1)
    return saliency, best.indices.numpy(), best.values.numpy()


def plot_saliency(
    trace: np.ndarray, saliency: np.ndarray, title: str, path: Path, rate: float = COMMON_RATE
) -> None:
    """The trace in black over its saliency, drawn as a colour band behind it."""
    time = np.arange(len(trace)) / rate
    figure = Figure(figsize=(8.0, 2.4), dpi=100)
    axes = figure.subplots()
    low, high = float(trace.min()), float(trace.max())
    margin = 0.05 * max(high - low, 1e-6)
    band = axes.imshow(
        saliency[None, :],
        cmap="jet",
        alpha=SALIENCY_ALPHA,
        vmin=0.0,
        vmax=1.0,
        aspect="auto",
        extent=(0.0, len(trace) / rate, low - margin, high + margin),
    )
    axes.plot(time, trace, color="black", linewidth=0.8)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("standardised amplitude")
    axes.set_title(title, fontsize=8)
    figure.colorbar(band, ax=axes, label="Grad-CAM", fraction=0.03, pad=0.01)
    figure.tight_layout()
    figure.savefig(path)
