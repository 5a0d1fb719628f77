"""Object segmentation of 2-D images across hospitals with different scanners.

Data: the same simulated sites as ``imaging-cls`` (:mod:`fedmed.data.imaging_synth`), with
every object's mask as the target. With ``data_dir`` the pack reads one folder per site holding
``images/`` and ``masks/`` (same file names; any mask value > 0 is foreground) through
:mod:`fedmed.data.imaging_readers` (layout: docs/imaging.md).

Model: a MONAI U-Net with three levels of 8–32 channels and one residual unit per level.
Normalisation is InstanceNorm without affine parameters or running statistics — per-sample by
construction, so DP-SGD's per-sample gradients stay exact. Activations are LeakyReLU: it has
no weight (MONAI's default PReLU does, and Opacus has no per-sample rule for it), and unlike ReLU
it cannot die — MONAI's U-Net passes its output through a one-channel norm + activation before
the last residual unit, and with ReLU one initialisation in six collapsed to empty masks here.
Opacus has no per-sample rule for the up-sampling ``ConvTranspose2d`` either; its functorch
fallback computes those (tests/test_imaging.py checks every parameter's per-sample gradients).

Loss: MONAI's ``DiceCELoss`` — soft Dice plus pixel-wise binary cross-entropy on the sigmoid
output. Dice alone trains slowly with the plain SGD every node uses (one site, 192 images,
lr 0.1: Dice 0.80 vs 0.93 after ten epochs); the cross-entropy term gives useful gradients
while the masks are still poor. Dice is computed per image (``batch=False``): a batch-wide Dice
would couple the samples of a batch and break DP-SGD's per-sample clipping.

Metrics: ``dice`` (primary) and ``hd95`` — the 95th-percentile symmetric Hausdorff distance in
pixels of the model grid, lower is better — from MONAI's ``DiceMetric`` and
``HausdorffDistanceMetric`` on predictions thresholded at 0.5. An image where the model finds
nothing scores Dice 0 and the image diagonal as its distance, so a model cannot improve its
mean by predicting empty masks.

Augmentation (``--set augment=...``): the spatial transforms move each image and its mask with
one random draw, the mask resampled by nearest neighbour (:mod:`fedmed.tasks.imaging_augment`).

Explainer: predicted vs true mask overlays (:class:`fedmed.explain.mask_overlay.MaskOverlay`)
titled with each image's Dice from :func:`image_dice` — a U-Net's output is its own map: where
it draws the mask is what it found, so no saliency method is needed.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedmed.config import Scalar
from fedmed.data.imaging_readers import IMAGES_DIR, HeaderDeid, read_segmentation_folder
from fedmed.data.imaging_synth import SiteImages
from fedmed.errors import ConfigError
from fedmed.explain.mask_overlay import MaskOverlay
from fedmed.tasks import register_task
from fedmed.tasks.base import predict
from fedmed.tasks.imaging_pack import ImagingPack

CHANNELS = (8, 16, 32)
STRIDES = (2, 2)


def build_unet(channels: tuple[int, ...] = CHANNELS) -> nn.Module:
    """A small 2-D MONAI U-Net, one output logit per pixel, DP-SGD ready (see module docstring)."""
    from monai.networks.nets import UNet  # MONAI's import is slow: only when a model is built

    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=channels,
        strides=STRIDES[: len(channels) - 1],
        num_res_units=1,
        act=("leakyrelu", {"negative_slope": 0.1}),
        norm="INSTANCE",
    )


def segmentation_scores(logits: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Mean Dice and HD95 over images; empty predictions count as the worst case."""
    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    predicted = (torch.sigmoid(logits) >= 0.5).float()
    truth = (masks >= 0.5).float()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    dice_per_image = dice(predicted, truth).reshape(-1)
    found = predicted.flatten(1).any(dim=1) & truth.flatten(1).any(dim=1)
    worst = math.hypot(*truth.shape[-2:])
    hd95 = torch.full((len(truth),), worst)
    if found.any():
        metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
        with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
            warnings.simplefilter("ignore", FutureWarning)
            distances = metric(predicted[found], truth[found])
        hd95[found] = distances.reshape(-1).float()
    return {"dice": float(dice_per_image.mean()), "hd95": float(hd95.mean())}


def image_dice(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """The Dice of :func:`segmentation_scores` (mean over the given images)."""
    return segmentation_scores(logits, masks)["dice"]


@functools.cache
def _dice_loss() -> nn.Module:
    """Soft Dice per image, averaged (see the module docstring for why not batch-wide)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, batch=False, reduction="mean")


@register_task("imaging-seg")
class ImagingSegmentationTask(ImagingPack):
    """Binary segmentation of every object in the image."""

    metrics = ("dice", "hd95")
    primary_metric = "dice"
    default_lr = 0.2
    default_batch_size = 16
    default_local_epochs = 1
    site_marker = IMAGES_DIR
    mask_target = True
    explainer = MaskOverlay(dice=image_dice)

    def synthetic_split(self, images: SiteImages) -> tuple[np.ndarray, np.ndarray]:
        return images.images, images.masks

    def read_site_folder(
        self, folder: Path, header_deid: HeaderDeid | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return read_segmentation_folder(folder, self.settings.image_size, header_deid)

    def configure(self, settings: Mapping[str, Scalar]) -> None:
        """``image-size`` (a multiple of 4: the U-Net halves the grid twice and adds each
        level's output to the one above), ``augment`` and ``train-size``."""
        super().configure(settings)
        if self.settings.image_size % 4:
            raise ConfigError(f"imaging-seg: image-size must be a multiple of 4, "
                              f"got {self.settings.image_size}")  # fmt: skip

    def build_model(self) -> nn.Module:
        return build_unet()

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return _dice_loss()(outputs, targets.float())

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        return segmentation_scores(*predict(model, dataset, device))
