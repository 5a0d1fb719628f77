"""What the imaging packs share: the synthetic sites, real site folders, tensors.

:class:`ImagingPack` is the base of the classification (:mod:`fedmed.tasks.imaging_cls`) and
segmentation (:mod:`fedmed.tasks.imaging_seg`) packs. It registers no task itself. Real
site folders are split train/test with a fixed seed, stratified by label when the task has
one, so every run and every regime scores the same test images.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedmed.data.imaging_readers import HeaderDeid
from fedmed.data.imaging_synth import SITES, SiteImages, make_site_images
from fedmed.data.site_folders import site_folders
from fedmed.data.splits import stratified_split
from fedmed.errors import DataError
from fedmed.tasks.base import SiteData, TaskPack, fingerprint_arrays

TEST_FRACTION = 0.3
SPLIT_SEED = 42

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class ImagingPack(TaskPack):
    """What the imaging packs share: the synthetic sites, real site folders, tensors.

    A subclass says which marker identifies a real site folder, how to read one, and which
    target of the synthetic :class:`SiteImages` it learns.
    """

    default_sites = tuple(SITES)
    site_marker: ClassVar[str]

    def __init__(self, header_deid: HeaderDeid | None = None) -> None:
        # The node plugs the de-identification stage's DICOM header scrubber in here.
        self.header_deid = header_deid

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        if data_dir is None:
            return list(self.default_sites)
        return site_folders(Path(data_dir), self.site_marker)

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        if data_dir is None:
            splits = make_site_images(site, seed)
            arrays = (*self.synthetic_split(splits.train), *self.synthetic_split(splits.test))
        else:
            arrays = self._real_site(Path(data_dir) / site)
        x_train, y_train, x_test, y_test = (np.array(a) for a in arrays)  # copies: cache is RO
        return SiteData(
            site=site,
            train=self.dataset(x_train, y_train),
            val=None,
            test=self.dataset(x_test, y_test),
            fingerprint=fingerprint_arrays([x_train, y_train, x_test, y_test]),
        )

    @abstractmethod
    def synthetic_split(self, images: SiteImages) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (n × H × W) and targets of one synthetic split."""

    @abstractmethod
    def read_site_folder(self, folder: Path) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (n × H × W) and targets of one real site folder."""

    @staticmethod
    def dataset(images: np.ndarray, targets: np.ndarray) -> TensorDataset:
        """Float tensors; inputs (n × H × W) and mask targets gain the channel axis."""
        inputs = torch.from_numpy(images.astype(np.float32))[:, None]
        labels = torch.from_numpy(targets.astype(np.float32))
        return TensorDataset(inputs, labels[:, None] if labels.ndim == 3 else labels)

    def _real_site(self, folder: Path) -> Arrays:
        """A real site folder split train/test with a fixed seed (stratified by label if any)."""
        if not folder.is_dir():
            raise DataError(f"{folder}: site folder not found")
        images, targets = self.read_site_folder(folder)
        strata = targets if targets.ndim == 1 else np.zeros(len(targets))
        is_test = stratified_split(strata, TEST_FRACTION, SPLIT_SEED)
        if is_test.all() or not is_test.any():
            raise DataError(f"{folder}: too few images ({len(images)}) to split train/test")
        return images[~is_test], targets[~is_test], images[is_test], targets[is_test]
