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
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from fedmed.errors import ConfigError
from fedmed.tasks.base import SiteData, TaskPack

OVERLAY_ALPHA = 0.45


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
    figure = Figure(figsize=(4.4, 2.4), dpi=100)
    plain, overlay = figure.subplots(1, 2)
    for axes in (plain, overlay):
        axes.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
        axes.set_axis_off()
    overlay.imshow(heatmap, cmap="jet", alpha=OVERLAY_ALPHA, vmin=0.0, vmax=1.0)
    figure.suptitle(title, fontsize=8)
    figure.savefig(path)
