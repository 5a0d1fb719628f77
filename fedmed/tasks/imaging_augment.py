"""The imaging packs' augmentation: MONAI dictionary transforms, one view per image.

What each name of the ``augment`` setting (:mod:`fedmed.tasks.augmentation`) applies, each
with probability :data:`PROB` per view:

- ``flip``: ``RandAxisFlipd``, a flip along a random image axis;
- ``rotate90``: ``RandRotate90d``, a quarter turn (1–3 of them);
- ``rotate``: ``RandRotated``, a small rotation (±:data:`MAX_DEGREES`°, border padding);
- ``intensity``: ``RandScaleIntensityd`` then ``RandShiftIntensityd`` (±10 % of the [0, 1]
  range each), what a scanner's gain and offset leave after normalisation;
- ``contrast``: ``RandAdjustContrastd``, a gamma curve (:data:`GAMMA`), as another
  sequence or window would give;
- ``elastic``: ``Rand2DElasticd``, a smooth deformation (control points a quarter of the
  image apart, displaced by about a pixel of the 32 px grid).

``light`` is ``flip``, ``rotate90`` and ``intensity``; ``strong`` is all six. None of them
zooms: ``imaging-cls``'s label is the *size* of the largest lesion, which a zoom would change.

Why dictionary transforms: a segmentation mask must move with its image, so the spatial
transforms act on the keys ``image`` and ``label`` with one random draw (the mask resampled
by nearest neighbour, so it stays binary) and the intensity transforms on ``image`` only. The
classification pack passes its image alone through the same transforms, so the two packs
cannot drift apart. A view is seeded through MONAI's ``set_random_state`` with the seed
:class:`~fedmed.tasks.augmentation.AugmentedDataset` gives it, so views are reproducible.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fedmed.tasks.augmentation import choose_transforms

TRANSFORMS = ("flip", "rotate90", "rotate", "intensity", "contrast", "elastic")
LIGHT = ("flip", "rotate90", "intensity")
PROB = 0.5
MAX_DEGREES = 15.0
GAMMA = (0.7, 1.5)
INTENSITY = 0.1
ELASTIC_MAGNITUDE = (0.5, 1.5)  # pixels of the 32 px grid; scaled with the image


def imaging_transforms(value: str) -> tuple[str, ...]:
    """The transform names an ``augment`` value gives an imaging pack (ConfigError if bad)."""
    return choose_transforms(value, TRANSFORMS, LIGHT)


class MonaiView:
    """One augmented view of an image (and of its mask, ``with_mask``) per call.

    The MONAI pipeline is built on the first call (MONAI's import is slow, and the elastic
    grid depends on the image size), then reseeded for every view."""

    def __init__(self, names: tuple[str, ...], with_mask: bool) -> None:
        self.names = names
        self.with_mask = with_mask
        self._pipeline: Any = None

    def _build(self, size: int) -> Any:
        from monai import transforms as mt  # slow import: only when a site augments

        spatial = ["image", "label"] if self.with_mask else ["image"]
        modes = ["bilinear", "nearest"] if self.with_mask else ["bilinear"]
        scale = size / 32
        steps = {
            "flip": [mt.RandAxisFlipd(spatial, prob=PROB)],
            "rotate90": [mt.RandRotate90d(spatial, prob=PROB)],
            "rotate": [mt.RandRotated(spatial, range_x=math.radians(MAX_DEGREES), prob=PROB,
                                      mode=modes, padding_mode="border")],  # fmt: skip
            "intensity": [mt.RandScaleIntensityd("image", factors=INTENSITY, prob=PROB),
                          mt.RandShiftIntensityd("image", offsets=INTENSITY, prob=PROB)],
            "contrast": [mt.RandAdjustContrastd("image", gamma=GAMMA, prob=PROB)],
            "elastic": [mt.Rand2DElasticd(
                spatial, spacing=max(size // 4, 2), prob=PROB, mode=modes,
                magnitude_range=tuple(m * scale for m in ELASTIC_MAGNITUDE),
                padding_mode="border")],
        }  # fmt: skip
        return mt.Compose([step for name in self.names for step in steps[name]])

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from monai.utils import convert_to_tensor

        if self._pipeline is None:
            self._pipeline = self._build(int(image.shape[-1]))
        self._pipeline.set_random_state(seed=seed)
        item = {"image": image, "label": target} if self.with_mask else {"image": image}
        out = self._pipeline(item)

        def plain(value: Any) -> torch.Tensor:  # MetaTensor -> the float tensor the model reads
            return convert_to_tensor(value, dtype=torch.float32, track_meta=False).contiguous()

        return plain(out["image"]), plain(out["label"]) if self.with_mask else target
