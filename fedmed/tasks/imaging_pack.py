"""What the imaging packs share: the synthetic sites, real site folders, tensors.

:class:`ImagingPack` is the base of the classification (:mod:`fedmed.tasks.imaging_cls`) and
segmentation (:mod:`fedmed.tasks.imaging_seg`) packs. It registers no task itself. Real
site folders are split train/test with a fixed seed, stratified by label when the task has
one, so every run and every regime scores the same test images.

A pack's own settings (``image-size``, ``augment``, ``train-size`` — training images per built-in
site, :mod:`fedmed.tasks.site_size`; the classification pack also ``backbone``,
``fine-tune``, ``backbone-norm``) are :class:`fedmed.tasks.imaging_backbone.ImagingSettings`.
With ``augment``, the training split (never the test split) gives a fresh MONAI view of each
image per draw (:mod:`fedmed.tasks.augmentation`, :mod:`fedmed.tasks.imaging_augment`).
With a pretrained backbone cut below its trainable part, a site's images are encoded once by
the frozen part as they are loaded (:func:`~fedmed.tasks.imaging_backbone.cached_encoding`)
and the datasets hold those encodings. A real site's encodings derive from patient images and
are kept in its admission home; the synthetic sites' in ``<state>/encodings``, shared by every
study and federation that renders the same images (a leave-one-site-out study would otherwise
encode each site once per federation).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from fedmed.config import Scalar
from fedmed.data.imaging_readers import HeaderDeid
from fedmed.data.imaging_synth import N_TRAIN, SITES, SiteImages, make_site_images
from fedmed.data.site_folders import site_folders
from fedmed.data.splits import stratified_split
from fedmed.errors import DataError
from fedmed.state import state_root
from fedmed.tasks.augmentation import training_split
from fedmed.tasks.base import SiteData, TaskPack, fingerprint_arrays
from fedmed.tasks.imaging_augment import MonaiView
from fedmed.tasks.imaging_backbone import EncodedImages, ImagingSettings, cached_encoding
from fedmed.tasks.site_size import refuse_with_data_dir

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
    pack_settings: ClassVar[tuple[str, ...]] = ("image-size", "augment", "train-size")
    mask_target: ClassVar[bool] = False  # a segmentation mask moves with its image's view
    settings: ImagingSettings = ImagingSettings()  # get_task configures each instance

    def configure(self, settings: Mapping[str, Scalar]) -> None:
        self.settings = ImagingSettings.parse(settings, self.pack_settings)

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        if data_dir is None:
            return list(self.default_sites)
        return site_folders(Path(data_dir), self.site_marker)

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        refuse_with_data_dir(self.settings.train_size, data_dir)
        if data_dir is None:
            splits = make_site_images(site, seed, self.settings.train_size or N_TRAIN,
                                      size=self.settings.image_size)
            arrays = (*self.synthetic_split(splits.train), *self.synthetic_split(splits.test))
            encodings = state_root() / "encodings"
        else:
            arrays = self._real_site(site, Path(data_dir) / site)
            encodings = self.admission_stage(site).home / "encodings"
        x_train, y_train, x_test, y_test = (np.array(a) for a in arrays)  # copies: cache is RO
        return SiteData(
            site=site,
            train=self.training_dataset(x_train, y_train, encodings),
            val=None,
            test=self.test_split(site, (x_train, y_train, x_test, y_test), encodings),
            fingerprint=fingerprint_arrays([x_train, y_train, x_test, y_test]),
        )

    def test_split(self, site: str, arrays: Arrays, cache: Path) -> Dataset:
        """The split a site is scored on: its test images as the model reads them. A hook
        because retrieval (:mod:`fedmed.tasks.imaging_retrieval`) scores test queries against
        the site's own training images, so its test split carries them as its gallery."""
        return self.model_dataset(arrays[2], arrays[3], cache)

    def model_dataset(self, images: np.ndarray, targets: np.ndarray, cache: Path) -> TensorDataset:
        """What the pack's model reads: the images, or their encodings by the frozen part of a
        pretrained backbone, kept in the folder ``cache`` (module docstring)."""
        dataset = self.dataset(images, targets)
        if not self.settings.encodes:
            return dataset
        inputs, labels = dataset.tensors
        return EncodedImages(cached_encoding(self.settings, inputs, cache), labels, inputs)

    def training_dataset(self, images: np.ndarray, targets: np.ndarray, cache: Path) -> Dataset:
        """:meth:`model_dataset`, augmented when the ``augment`` setting names transforms (never
        with encodings: :class:`ImagingSettings` refuses that combination)."""
        raw = self.model_dataset(images, targets, cache)
        names = self.settings.augment
        return training_split(raw, MonaiView(names, self.mask_target) if names else None)

    @abstractmethod
    def synthetic_split(self, images: SiteImages) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (n × H × W) and targets of one synthetic split."""

    @abstractmethod
    def read_site_folder(
        self, folder: Path, header_deid: HeaderDeid | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inputs (n × H × W) and targets of one real site folder, every DICOM header
        through ``header_deid`` (quarantined files left out)."""

    @staticmethod
    def dataset(images: np.ndarray, targets: np.ndarray) -> TensorDataset:
        """Float tensors; inputs (n × H × W) and mask targets gain the channel axis."""
        inputs = torch.from_numpy(images.astype(np.float32))[:, None]
        labels = torch.from_numpy(targets.astype(np.float32))
        return TensorDataset(inputs, labels[:, None] if labels.ndim == 3 else labels)

    def _real_site(self, site: str, folder: Path) -> Arrays:
        """A real site folder through the site's de-id gate (DICOM headers; the batch signed
        before the arrays are returned), split train/test with a fixed seed (stratified by
        label if any)."""
        if not folder.is_dir():
            raise DataError(f"{folder}: site folder not found")
        with self.admission_stage(site).folder_batch("dicom", self.name, folder) as gate:
            images, targets = self.read_site_folder(folder, gate.dicom_header)
        strata = targets if targets.ndim == 1 else np.zeros(len(targets))
        is_test = stratified_split(strata, TEST_FRACTION, SPLIT_SEED)
        if is_test.all() or not is_test.any():
            raise DataError(f"{folder}: too few images ({len(images)}) to split train/test")
        return images[~is_test], targets[~is_test], images[is_test], targets[is_test]
