"""Training-time augmentation: the ``augment`` pack setting and the dataset that applies it.

Setting (``--set augment=VALUE`` or the federation folder; :class:`fedmed.config.TaskRef`
carries it to every process, like ``image-size``): ``none`` (default), ``light`` (the pack's
gentle subset), ``strong`` (every transform of the pack) or a comma list of the pack's
transform names. The imaging packs' transforms are MONAI's
(:mod:`fedmed.tasks.imaging_augment`), the ECG packs' small NumPy functions
(:mod:`fedmed.tasks.ecg_augment`); other packs refuse the setting.

Where it runs. Only a site's *training* split is wrapped (:class:`AugmentedDataset`): each
``__getitem__`` draws a fresh view of the stored record. The test split is never wrapped, so
every regime and every seed scores the same images and windows. Augmentation happens on the
node, inside its own training data; nothing about it leaves the site.

Determinism. A view is a pure function of (round seed, epoch, record index): the training loop
calls :func:`seed_views` before each epoch with the round's seed (the coordinator's
``seed``, which differs every round), so a rerun draws the same views whatever process loaded
the site, and two epochs or rounds draw different ones.

DP accounting unit. One record gives *one* view per draw, and the view replaces the record
in the batch: the dataset's length, Poisson sampling's rate ``batch_size / len(dataset)`` and
the number of steps are exactly those of the unaugmented run, and each per-example gradient
that DP-SGD clips is still computed from a single patient's record. The accountant's unit
therefore stays the patient's record (one patient per record in these packs), and ε means
what it meant without augmentation. (Adding augmented *copies* as extra rows would not: one
patient would then contribute several clipped gradients per step, and the accountant, which
counts rows, would understate that patient's privacy loss.) The views' randomness comes from
the coordinator's round seed, which is harmless: DP-SGD's guarantee holds for any fixed choice
of views, since the clipped per-example sensitivity does not depend on them; the secret part
is the noise and the sampling, drawn from the site's own secret (``DPTrainer``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from fedmed.errors import ConfigError

NONE, LIGHT, STRONG = "none", "light", "strong"
SETTING = "augment"

# (input, target, seed) -> the augmented (input, target); the seed fixes every random draw.
View = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def choose_transforms(
    value: str, catalogue: Sequence[str], light: Sequence[str]
) -> tuple[str, ...]:
    """The transforms an ``augment`` value names, in ``catalogue`` order (so ``flip,rotate``
    and ``rotate,flip`` are one setting); ``()`` for ``none``. ConfigError naming the
    setting and the allowed values on anything else."""
    text = value.strip()
    if text == NONE:
        return ()
    if text in (LIGHT, STRONG):
        chosen = set(light if text == LIGHT else catalogue)
    else:
        chosen = {name.strip() for name in text.split(",")}
        if not chosen <= set(catalogue):
            raise ConfigError(
                f"{SETTING} must be {NONE}, {LIGHT}, {STRONG} or a comma list of "
                f"{', '.join(catalogue)}; got {value!r}"
            )
    return tuple(name for name in catalogue if name in chosen)


def view_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed (what MONAI's ``set_random_state`` takes) for one record's view."""
    return int(np.random.SeedSequence([seed % 2**63, epoch, index]).generate_state(1)[0])


class AugmentedDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A training split whose items are fresh views of ``raw``'s records (module docstring):
    same length, same order, one view per record and draw."""

    def __init__(self, raw: Dataset[tuple[torch.Tensor, torch.Tensor]], view: View) -> None:
        self.raw = raw
        self.view = view
        self.seed = 0
        self.epoch = 0

    def set_epoch(self, seed: int, epoch: int) -> None:
        """Draw the views of ``epoch`` of the round seeded ``seed`` from now on."""
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.raw)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, target = self.raw[index]
        return self.view(inputs, target, view_seed(self.seed, self.epoch, index))


def training_split(raw: Dataset, view: View | None) -> Dataset:
    """``raw`` wrapped in :class:`AugmentedDataset`, or ``raw`` itself without a view (so
    ``augment=none`` trains exactly as before the setting existed)."""
    return raw if view is None else AugmentedDataset(raw, view)


def seed_views(dataset: Dataset, seed: int, epoch: int) -> None:
    """Seed the views of every :class:`AugmentedDataset` inside ``dataset`` (also through
    the concatenations and subsets the pooled baselines and audits build) for one epoch."""
    if isinstance(dataset, AugmentedDataset):
        dataset.set_epoch(seed, epoch)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            seed_views(part, seed, epoch)
    elif isinstance(dataset, Subset):
        seed_views(dataset.dataset, seed, epoch)
