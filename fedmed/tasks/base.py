"""The task-pack contract.

A task pack is everything fedmed knows about one learning task: how to load one
site's data (train/val/test), which model to build, the loss, and how to score a
model, and optionally which explainer explains it. Packs never know about Flower or Opacus:
the node (``fedmed.clients``) builds optimisers and data loaders, wraps them for
DP-SGD, and calls the pack. That is what lets every pack run with DP and in every
federation unchanged.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from fedmed.config import Scalar
from fedmed.data.admission import AdmissionStage
from fedmed.errors import ConfigError
from fedmed.explain.base import Explainer
from fedmed.inference import predict


@dataclass(frozen=True)
class SiteData:
    """One site's splits. ``fingerprint`` identifies the exact data trained on (ledger/audit)."""

    site: str
    train: Dataset
    val: Dataset | None
    test: Dataset
    fingerprint: str


class TaskPack(ABC):
    """One learning task. Subclasses register themselves with :func:`fedmed.tasks.register_task`.

    Class attributes every pack sets:

    - ``name``: the registry name used in configs and on the command line.
    - ``metrics``: the metric names :meth:`evaluate` returns; ``primary_metric`` is one of them
      and is what tables and plots lead with (higher is better).
    - ``default_sites``: the sites of the pack's built-in multi-site data.
    - ``default_lr``, ``default_batch_size``, ``default_local_epochs``: training defaults a
      federation config may override.

    A pack that can explain its model declares its ``explainer`` (an
    :class:`~fedmed.explain.base.Explainer`: Grad-CAM, mask overlays, ECG saliency, text
    evidence, PHI review); :meth:`explain` runs it and :attr:`explanation_kind` is its
    ``kind``. A pack without one (``None``) explains nothing.

    A pack reads a site's raw data only through its :attr:`admission` stage (the de-id gate,
    docs/architecture.md § Data flow): the node sets it to the stage of its site home
    (:func:`fedmed.tasks.get_task`), so every batch is signed into the site's audit log;
    without one, :meth:`admission_stage` gives the unsigned local stage.
    """

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    primary_metric: ClassVar[str]
    default_sites: ClassVar[tuple[str, ...]]
    default_lr: ClassVar[float] = 0.05
    default_batch_size: ClassVar[int] = 32
    default_local_epochs: ClassVar[int] = 1
    explainer: ClassVar[Explainer | None] = None  # None: the pack explains nothing
    explain_examples: ClassVar[int] = 4  # test examples a site explains at the end of a run
    admission: AdmissionStage | None = None  # set per instance by get_task on a node

    def configure(self, settings: Mapping[str, Scalar]) -> None:
        """Take the pack's own settings (``backbone``, ``image-size``, ``augment``, … of the
        federation config; :func:`fedmed.tasks.get_task` passes them). A pack that takes none
        refuses any, so a setting can never be silently ignored."""
        if settings:
            raise ConfigError(
                f"task {self.name!r} takes no {', '.join(sorted(settings))} setting "
                "(the imaging, ECG, ICD and de-id NER packs take some: docs/task-packs.md)"
            )

    def admission_stage(self, site: str) -> AdmissionStage:
        """The stage ``site``'s raw data pass (the node's, else the local unsigned one)."""
        if self.admission is None:
            return AdmissionStage.local(self.name, site)
        if self.admission.site != site:
            raise ConfigError(f"this {self.name} pack admits data of site "
                              f"{self.admission.site!r}, not {site!r}")
        return self.admission

    @property
    def explanation_kind(self) -> str:
        """What the pack's explanation files are, for the run report ("" = no explainer)."""
        return self.explainer.kind if self.explainer is not None else ""

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        """Sites available for this pack (the built-in ones unless a pack reads ``data_dir``)."""
        return list(self.default_sites)

    @abstractmethod
    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        """Load one site's train/val/test splits. Raise DataError naming the file on bad input."""

    @abstractmethod
    def build_model(self) -> nn.Module:
        """A fresh model (same architecture at every site). No BatchNorm: DP-SGD forbids it."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over a batch."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        """Score ``model`` on ``dataset``; keys are exactly ``self.metrics``."""

    def explain(self, model: nn.Module, site_data: SiteData, out_dir: Path) -> list[Path]:
        """Run the pack's explainer on the first :attr:`explain_examples` test examples of
        the site, writing into ``out_dir``; returns the files written (none without one).

        The files show patient data, so the node writes them into its own site home on the
        run's last evaluation and never sends them (fedmed.explain.outcome); an explainer may
        therefore draw raw test inputs. It must not change ``model``.
        """
        if self.explainer is None:
            return []
        return self.explainer.explain(
            model, site_data.test, site_data.site, Path(out_dir), self.explain_examples
        )


def fingerprint_arrays(arrays: Sequence[np.ndarray]) -> str:
    """SHA-256 over arrays' dtypes, shapes and bytes: a stable identity for a site's data."""
    digest = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(str(contiguous.dtype).encode())
        digest.update(str(contiguous.shape).encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()


def binary_logit_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy at probability 0.5 and ROC AUC of one-logit binary predictions; AUC is NaN
    on a split with one class only, as a small site's test split can be.

    The AUC ranks the logits, not their sigmoid: the two rank alike, except that a model
    far from a site's data (a head trained elsewhere on pretrained features, leave one site
    out) gives logits whose float32 sigmoid is exactly 1.0 or 0.0 for every image — all tied,
    so an AUC of the probabilities reads 0.500 whatever the ranking."""
    from sklearn.metrics import roc_auc_score

    flat = logits.reshape(-1).double().numpy()
    truth = labels.reshape(-1).numpy() >= 0.5
    auc = float(roc_auc_score(truth, flat)) if len(np.unique(truth)) > 1 else float("nan")
    return {"accuracy": float(((flat >= 0.0) == truth).mean()), "auc": auc}


class BinaryLogitPack(TaskPack):
    """A tabular risk pack: one logistic layer over ``num_inputs`` encoded columns, binary
    cross-entropy on the logit, accuracy and AUC. The heart and rhDNase packs differ only in
    how a site's table becomes arrays, so the model, loss and scores live here once."""

    metrics = ("accuracy", "auc")
    primary_metric = "accuracy"
    num_inputs: ClassVar[int]

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(self.num_inputs, 1), nn.Flatten(0))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(outputs, targets.float())

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        return binary_logit_scores(*predict(model, dataset, device))


def array_site_data(site: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                    y_test: np.ndarray) -> SiteData:
    """A site's train and test arrays as tensor datasets, fingerprinted over all four."""
    return SiteData(
        site=site,
        train=TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        val=None,
        test=TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        fingerprint=fingerprint_arrays([x_train, y_train, x_test, y_test]),
    )
