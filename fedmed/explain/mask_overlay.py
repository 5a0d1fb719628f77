"""Predicted vs true mask overlays for a segmentation model.

A segmentation model needs no saliency method: its output *is* a map of where it found the
object. :class:`MaskOverlay` draws the predicted mask against the true one, so a reader sees
at a glance what was missed (true only) and what was invented (predicted only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedmed.explain.base import PictureExplainer, explained_copy
from fedmed.explain.gradcam import image_pair

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# RGBA of the mask overlay: true only (missed), predicted only (invented), both (found).
MISSED = (0.1, 0.8, 0.1, 0.55)
INVENTED = (0.9, 0.1, 0.1, 0.55)
FOUND = (1.0, 0.85, 0.0, 0.55)

# Dice of one image: (logits 1 × 1 × H × W, true mask 1 × 1 × H × W) → score.
Dice = Callable[[torch.Tensor, torch.Tensor], float]


class MaskOverlay(PictureExplainer):
    """Predicted-vs-true mask overlays of a one-logit-per-pixel segmentation model.

    Files are ``segmentation-<site>-<index>.png``: the image alone and with the masks over it
    (yellow: found, green: missed, red: predicted where there is no object), titled with the
    image's Dice as ``dice`` computes it — the pack's own metric, passed in, not a copy.
    """

    kind = "predicted vs true mask overlays (PNG)"
    prefix = "segmentation"

    def __init__(self, dice: Dice) -> None:
        self.dice = dice

    def figures(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, captions: list[str]
    ) -> list[Figure]:
        with torch.no_grad():
            logits = explained_copy(model)(inputs)
        figures = []
        for index, caption in enumerate(captions):
            dice = self.dice(logits[index : index + 1], targets[index : index + 1])
            title = f"{caption}: Dice {dice:.2f} (yellow: found, green: missed, red: extra)"
            predicted = torch.sigmoid(logits[index, 0]).numpy() >= 0.5
            figures.append(mask_figure(inputs[index, 0].numpy(), targets[index, 0].numpy() >= 0.5,
                                       predicted, title))
        return figures


def mask_figure(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, title: str
                ) -> Figure:
    """The grey image beside the same image with both masks coloured over it."""
    layer = np.zeros((*image.shape, 4))
    layer[truth & predicted] = FOUND
    layer[truth & ~predicted] = MISSED
    layer[~truth & predicted] = INVENTED
    figure, overlay = image_pair(image, title)
    overlay.imshow(layer)
    return figure
