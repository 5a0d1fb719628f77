"""Grad-CAM heatmaps for the imaging classifier, saved as PNG overlays.

A clinician asked to trust a federated model wants to see *where* it looked. Grad-CAM
(Selvaraju et al., 2017) weights a convolutional feature map by the gradient of the output
logit and shows which regions pushed the score up; MONAI's :class:`monai.visualize.GradCAM`
computes it and upsamples it to the image. The map explains the positive logit ("large lesion
present"), so on a negative image it shows what, if anything, argued for a lesion.

MONAI's default post-processing maps each map's (min, max) to (1, 0) — it flips magnitudes, so
the regions that mattered most would be drawn coldest. :func:`unit_range` is passed instead.

The model is deep-copied first: MONAI registers forward and backward hooks on the layer it
explains and never removes them, and a node may go on training or wrapping the same model
(Opacus adds its own hooks) after writing explanations.

A segmentation model needs no saliency method: its output *is* a map of where it found the
object. :func:`save_mask_overlays` draws the predicted mask against the true one, so a reader
sees at a glance what was missed (true only) and what was invented (predicted only).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from fedmed.errors import ConfigError
from fedmed.tasks.base import SiteData, TaskPack

OVERLAY_ALPHA = 0.45
# RGBA of the mask overlay: true only (missed), predicted only (invented), both (found).
MISSED = (0.1, 0.8, 0.1, 0.55)
INVENTED = (0.9, 0.1, 0.1, 0.55)
FOUND = (1.0, 0.85, 0.0, 0.55)


def save_gradcam(
    pack: TaskPack, model: nn.Module, site_data: SiteData, out_dir: str | Path, n: int = 4
) -> list[Path]:
    """Write Grad-CAM overlays of the first ``n`` test images of a site; return the PNG paths.

    ``pack`` must name the layer to explain in ``gradcam_layer`` (``imaging-cls`` does). Files are
    ``gradcam-<site>-<index>.png`` in ``out_dir`` (created if needed); the title of each shows the
    true label and the model's probability.
    """
    layer = getattr(pack, "gradcam_layer", None)
    if not layer:
        raise ConfigError(f"task {pack.name!r} has no Grad-CAM layer (gradcam_layer)")
    count = min(n, len(site_data.test))  # type: ignore[arg-type]
    if count < 1:
        return []
    images = torch.stack([site_data.test[index][0] for index in range(count)])
    labels = [float(site_data.test[index][1]) for index in range(count)]
    heatmaps, probabilities = gradcam_maps(model, layer, images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = out / f"gradcam-{site_data.site}-{index}.png"
        title = f"{site_data.site} #{index}: label {labels[index]:.0f}, "
        title += f"p={probabilities[index]:.2f}"
        save_overlay(images[index, 0].numpy(), heatmaps[index], title, path)
        paths.append(path)
    return paths


def gradcam_maps(
    model: nn.Module, layer: str, images: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps in ``[0, 1]`` (n × H × W) and sigmoid probabilities of single-logit ``model``."""
    from monai.visualize import GradCAM  # MONAI's import is slow: only when explaining

    explained = copy.deepcopy(model).cpu().eval()
    cam = GradCAM(nn_module=explained, target_layers=layer, postprocessing=unit_range)
    heatmaps = cam(x=images, class_idx=0).detach()[:, 0].numpy()
    with torch.no_grad():
        probabilities = torch.sigmoid(explained(images).reshape(len(images), -1)[:, 0]).numpy()
    return heatmaps, probabilities


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of a batch (n × 1 × H × W) to ``[0, 1]``, most important region = 1."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, *[1] * (maps.dim() - 1))
    span = (flat.max(dim=1).values.view_as(low) - low).clamp_min(1e-12)
    return (maps - low) / span


def save_overlay(image: np.ndarray, heatmap: np.ndarray, title: str, path: Path) -> None:
    """The grey image with the heatmap blended over it, side by side with the image alone."""
    figure, overlay = image_pair(image, title)
    overlay.imshow(heatmap, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0.0, vmax=1.0)
    figure.savefig(path)


def image_pair(image: np.ndarray, title: str) -> tuple[Figure, Axes]:
    """A titled figure with the grey image twice; returns it and the right-hand axes, where
    the caller draws its overlay (the left copy lets the reader see what lies underneath)."""
    figure = Figure(figsize=(4.4, 2.4), dpi=100)
    plain, overlay = figure.subplots(1, 2)
    for axes in (plain, overlay):
        axes.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        axes.set_axis_off()
    figure.suptitle(title, fontsize=8)
    return figure, overlay


def save_mask_overlays(
    model: nn.Module, site_data: SiteData, out_dir: str | Path, n: int = 4
) -> list[Path]:
    """Write predicted-vs-true mask overlays of the first ``n`` test images; return the PNGs.

    Files are ``segmentation-<site>-<index>.png`` in ``out_dir`` (created if needed): the image
    alone and with the masks over it (yellow: found, green: missed, red: predicted where there
    is no object), titled with the image's Dice.
    """
    from fedmed.tasks.imaging_seg import segmentation_scores  # the pack's own Dice, not a copy

    count = min(n, len(site_data.test))  # type: ignore[arg-type]
    if count < 1:
        return []
    images = torch.stack([site_data.test[index][0] for index in range(count)])
    masks = torch.stack([site_data.test[index][1] for index in range(count)])
    explained = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        logits = explained(images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        dice = segmentation_scores(logits[index : index + 1], masks[index : index + 1])["dice"]
        path = out / f"segmentation-{site_data.site}-{index}.png"
        title = f"{site_data.site} #{index}: Dice {dice:.2f} "
        title += "(yellow: found, green: missed, red: extra)"
        predicted = torch.sigmoid(logits[index, 0]).numpy() >= 0.5
        save_mask_overlay(images[index, 0].numpy(), masks[index, 0].numpy() >= 0.5, predicted,
                          title, path)
        paths.append(path)
    return paths


def save_mask_overlay(
    image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, title: str, path: Path
) -> None:
    """The grey image beside the same image with both masks coloured over it."""
    layer = np.zeros((*image.shape, 4))
    layer[truth & predicted] = FOUND
    layer[truth & ~predicted] = MISSED
    layer[~truth & predicted] = INVENTED
    figure, overlay = image_pair(image, title)
    overlay.imshow(layer)
    figure.savefig(path)
