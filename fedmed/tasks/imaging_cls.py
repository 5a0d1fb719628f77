"""Large-lesion classification of 2-D images across hospitals with different scanners.

Data: by default the simulated sites of :mod:`fedmed.data.imaging_synth` (four hospitals
whose scanners differ in resolution, blur, contrast, shading, noise and stored units; the label
says whether the image holds a large lesion). With ``data_dir`` the pack reads real images
instead: one folder per site holding ``labels.csv`` (``file,label`` with labels 0/1) and DICOM,
NIfTI, PNG or JPEG files, through :mod:`fedmed.data.imaging_readers` (layout: docs/imaging.md).

Model: a MONAI DenseNet shrunk to two dense blocks of two layers (16–32 channels, ~7.7k
parameters) for 32 × 32 inputs, with GroupNorm instead of BatchNorm (DP-SGD needs per-sample
gradients, which BatchNorm mixes across the batch) and non-in-place ReLUs (Opacus' backward
hooks reject in-place edits of a hooked layer's output). Not MONAI's ResNet: in MONAI 1.6 its
``norm`` and ``act`` arguments reach only the stem, so its residual blocks are silently built
with BatchNorm (Project-MONAI/MONAI PR #9028, open) and Opacus refuses the model. One logit;
the loss is binary cross-entropy.

Metrics: ``auc`` (primary: threshold-free, so it compares sites whose case mix and calibration
differ) and ``accuracy`` at probability 0.5.

With ``--set backbone=efficientnet-lite0`` the model is ImageNet-pretrained EfficientNet-Lite0
with one new logit, fine-tuned by the ``fine-tune`` schedule (head, last blocks or all) with
its BatchNorm frozen or replaced by GroupNorm (``backbone-norm``); ``image-size`` sets the grid
(:mod:`fedmed.tasks.imaging_backbone`, docs/imaging.md).

Explainer: Grad-CAM (:class:`fedmed.explain.gradcam.GradCam`) of :data:`GRADCAM_LAYER`, the last
feature map; with a pretrained backbone, of its last feature map (the frozen part and the
trained part chained again, on the site's test images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fedmed.data.imaging_readers import (
    LABELS_FILE,
    HeaderDeid,
    read_classification_folder,
)
from fedmed.data.imaging_synth import SiteImages
from fedmed.explain.gradcam import GradCam
from fedmed.tasks import register_task
from fedmed.tasks.base import SiteData, binary_logit_scores, predict
from fedmed.tasks.imaging_backbone import GRADCAM_LAYER as LITE_GRADCAM_LAYER
from fedmed.tasks.imaging_backbone import EncodedImages, LiteCut
from fedmed.tasks.imaging_pack import ImagingPack

INIT_FEATURES = 16
GROWTH_RATE = 8
BLOCKS = (2, 2)  # dense layers per block; the stem quarters the grid, each transition halves it
GROUPS = 4  # every layer width (16, 24, 32) is a multiple
GRADCAM_LAYER = "class_layers.relu"  # last feature map (4 × 4 grid) of build_classifier


def build_classifier(outputs: int = 1) -> nn.Module:
    """A tiny 2-D MONAI DenseNet with ``outputs`` output units (one logit here; the retrieval
    pack's embedding), DP-SGD ready (GroupNorm, no in-place)."""
    from monai.networks.nets import DenseNet  # MONAI's import is slow: only when a model is built

    return DenseNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=outputs,
        init_features=INIT_FEATURES,
        growth_rate=GROWTH_RATE,
        block_config=BLOCKS,
        bn_size=2,
        act=("relu", {"inplace": False}),
        norm=("group", {"num_groups": GROUPS}),
    )


@register_task("imaging-cls")
class ImagingClassificationTask(ImagingPack):
    """Binary classification: does the image hold a large lesion?"""

    metrics = ("auc", "accuracy")
    primary_metric = "auc"
    default_lr = 0.1
    default_batch_size = 32
    default_local_epochs = 1
    site_marker = LABELS_FILE
    explainer = GradCam(GRADCAM_LAYER)
    pack_settings = (
        "image-size", "augment", "train-size", "backbone", "fine-tune", "backbone-norm",
    )

    def synthetic_split(self, images: SiteImages) -> tuple[np.ndarray, np.ndarray]:
        return images.images, images.labels

    def read_site_folder(
        self, folder: Path, header_deid: HeaderDeid | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return read_classification_folder(folder, self.settings.image_size, header_deid)

    def build_model(self) -> nn.Module:
        if self.settings.pretrained:
            return LiteCut.of(self.settings).trainable
        return build_classifier()

    def explain(self, model: nn.Module, site_data: SiteData, out_dir: Path) -> list[Path]:
        """Grad-CAM; with a pretrained backbone on the whole chain (image → logit)."""
        if not self.settings.pretrained:
            return super().explain(model, site_data, out_dir)
        test = site_data.test
        if isinstance(test, EncodedImages):
            test = TensorDataset(test.images, test.tensors[1])
        whole = LiteCut.of(self.settings).whole(model)
        return GradCam(LITE_GRADCAM_LAYER).explain(
            whole, test, site_data.site, Path(out_dir), self.explain_examples
        )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(
            outputs.reshape(-1), targets.reshape(-1).float()
        )

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        return binary_logit_scores(*predict(model, dataset, device))
