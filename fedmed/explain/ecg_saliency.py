"""1-D Grad-CAM saliency for the ECG rhythm classifiers, drawn over the trace as PNG.

A cardiologist checking a federated rhythm model wants to see which stretch of the
recording drove the call — the irregular RR intervals, a run of fast beats, an artefact.
The map is Grad-CAM of the explained layer (:func:`fedmed.explain.gradcam.grad_cam`, the
same implementation as for images) for each window's *predicted* class.

The layer is the pack's to name (``ecg``: the CNN's last feature map; ``ecg-lstm``: the
convolutional features the LSTM reads, whose gradients pass through the recurrence).

A model whose only trained part is a linear layer over fixed features (``ecg-rhythm``) has
no learned feature map for Grad-CAM to weigh — on its few fixed band envelopes the weighted
sum is often negative everywhere, a blank map. :class:`EcgGradientSaliency` explains such a
model by input × gradient (MONAI's ``VanillaGrad``) instead, smoothed over about one QRS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedmed.data.ecg_readers import COMMON_RATE
from fedmed.explain.base import PictureExplainer, explained_copy
from fedmed.explain.gradcam import grad_cam, unit_range

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SALIENCY_ALPHA = 0.35
# Input × gradient is smoothed over about one QRS complex (90 ms at the 100 Hz common rate).
GRADIENT_SMOOTHING = 9


class EcgSaliency(PictureExplainer):
    """Grad-CAM of a multi-class 1-D classifier's ``layer``, under each (1 × samples) window.

    Files are ``saliency-<site>-<index>.png``; each title gives the true class, the predicted
    class and its probability, named from ``class_names``.
    """

    kind = "Grad-CAM saliency over the trace (PNG)"
    prefix = "saliency"

    def __init__(self, layer: str, class_names: Sequence[str], rate: float = COMMON_RATE) -> None:
        self.layer = layer
        self.class_names = tuple(class_names)
        self.rate = rate  # samples per second of the windows, for the time axis

    def maps(
        self, model: nn.Module, windows: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Saliency in ``[0, 1]`` (n × samples) of each window's predicted class, the
        predicted class indices and their softmax probabilities; ``windows`` is (n, 1, samples)."""
        saliency, logits = grad_cam(model, self.layer, windows)  # None: the predicted class
        best = torch.softmax(logits, dim=1).max(dim=1)
        return saliency, best.indices.numpy(), best.values.numpy()

    def figures(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, captions: list[str]
    ) -> list[Figure]:
        saliency, predicted, probability = self.maps(model, inputs)
        return [
            saliency_figure(
                inputs[index, 0].numpy(), saliency[index],
                f"{caption}: true {self.class_names[int(targets[index])]}, predicted "
                f"{self.class_names[predicted[index]]} (p={probability[index]:.2f})", self.rate)
            for index, caption in enumerate(captions)
        ]


class EcgGradientSaliency(EcgSaliency):
    """|input × gradient| of each window's predicted class, smoothed and scaled to ``[0, 1]``:
    for models with a fixed front end (module docstring). Same files and titles."""

    kind = "input × gradient saliency over the trace (PNG)"

    def __init__(self, class_names: Sequence[str], rate: float = COMMON_RATE) -> None:
        super().__init__("", class_names, rate)

    def maps(
        self, model: nn.Module, windows: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from monai.visualize import VanillaGrad  # MONAI's import is slow: only when explaining

        explained = explained_copy(model)
        gradient = VanillaGrad(explained)  # one window at a time: MONAI's contract
        relevance = torch.cat([
            (gradient(window[None].clone()) * window[None]).abs() for window in windows])
        smoothed = nn.functional.avg_pool1d(
            relevance, GRADIENT_SMOOTHING, stride=1, padding=GRADIENT_SMOOTHING // 2,
            count_include_pad=False)  # fmt: skip
        with torch.no_grad():
            best = torch.softmax(explained(windows), dim=1).max(dim=1)
        return unit_range(smoothed)[:, 0].numpy(), best.indices.numpy(), best.values.numpy()


def saliency_figure(
    trace: np.ndarray, saliency: np.ndarray, title: str, rate: float = COMMON_RATE
) -> Figure:
    """The trace in black over its saliency, drawn as a colour band behind it."""
    from matplotlib.figure import Figure  # matplotlib: only when drawing

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
    return figure
