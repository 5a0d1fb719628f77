"""Grad-CAM: the one implementation, for 2-D images and 1-D signals, and image overlays.

A clinician asked to trust a federated model wants to see *where* it looked. Grad-CAM
(Selvaraju et al., 2017) weights a convolutional feature map by the gradient of one output
logit and shows which regions pushed that score up; MONAI's :class:`monai.visualize.GradCAM`
computes it and upsamples it to the input. :func:`grad_cam` is used for images (here) and for
ECG traces (:mod:`fedmed.explain.ecg_saliency`): MONAI handles 1-D convolutions as they are
(its up-sampler picks linear interpolation for one spatial dimension).

MONAI's default post-processing maps each map's (min, max) to (1, 0) — it flips magnitudes, so
the regions that mattered most would be drawn coldest. :func:`unit_range` is passed instead.

The model is copied first (:func:`~fedmed.explain.base.explained_copy`): MONAI leaves its
hooks registered on the layer it explains.

:class:`GradCam` explains a single-logit image classifier (``imaging-cls``): the map explains
the positive logit ("large lesion present"), so on a negative image it shows what, if
anything, argued for a lesion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedmed.explain.base import PictureExplainer, explained_copy

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

OVERLAY_ALPHA = 0.45


def grad_cam(
    model: nn.Module, layer: str, inputs: torch.Tensor, class_idx: int | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """Grad-CAM of ``layer`` for each input, and the model's logits on ``inputs``.

    ``inputs`` is (n × 1 × spatial…): images (H × W) or traces (samples). The maps explain
    logit ``class_idx``, or each input's predicted class when None; they are upsampled to the
    input and scaled to ``[0, 1]`` per input (n × spatial…). ``model`` is left unchanged.
    """
    from monai.visualize import GradCAM  # MONAI's import is slow: only when explaining

    explained = explained_copy(model)
    cam = GradCAM(nn_module=explained, target_layers=layer, postprocessing=unit_range)
    maps = cam(x=inputs, class_idx=class_idx).detach()[:, 0].numpy()
    with torch.no_grad():
        logits = explained(inputs)
    return maps, logits


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch (n × 1 × spatial…) to ``[0, 1]``, most important region = 1."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    span = (flat.max(dim=1).values.view_as(low) - low).clamp_min(1e-12)
    return (maps - low) / span


class GradCam(PictureExplainer):
    """Grad-CAM overlays of a single-logit image classifier's ``layer``.

    Files are ``gradcam-<site>-<index>.png``: the image beside it with the heatmap over it,
    titled with the true label and the model's probability.
    """

    kind = "Grad-CAM overlays (PNG)"
    prefix = "gradcam"

    def __init__(self, layer: str) -> None:
        self.layer = layer  # a dotted module name, e.g. the last feature map

    def maps(self, model: nn.Module, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps in ``[0, 1]`` (n × H × W) of the positive logit, and its sigmoid
        probabilities."""
        heatmaps, logits = grad_cam(model, self.layer, images, class_idx=0)
        return heatmaps, torch.sigmoid(logits.reshape(len(images), -1)[:, 0]).numpy()

    def figures(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, captions: list[str]
    ) -> list[Figure]:
        heatmaps, probabilities = self.maps(model, inputs)
        return [
            overlay_figure(inputs[index, 0].numpy(), heatmaps[index],
                           f"{caption}: label {float(targets[index]):.0f}, "
                           f"p={probabilities[index]:.2f}")
            for index, caption in enumerate(captions)
        ]


def overlay_figure(image: np.ndarray, heatmap: np.ndarray, title: str) -> Figure:
    """The grey image with the heatmap blended over it, side by side with the image alone."""
    figure, overlay = image_pair(image, title)
    overlay.imshow(heatmap, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0.0, vmax=1.0)
    return figure


def image_pair(image: np.ndarray, title: str) -> tuple[Figure, Axes]:
    """A titled figure with the grey image twice; returns it and the right-hand axes, where
    the caller draws its overlay (the left copy lets the reader see what lies underneath)."""
    from matplotlib.figure import Figure  # matplotlib: only when drawing

    figure = Figure(figsize=(4.4, 2.4), dpi=100)
    plain, overlay = figure.subplots(1, 2)
    for axes in (plain, overlay):
        axes.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        axes.set_axis_off()
    figure.suptitle(title, fontsize=8)
    return figure, overlay
