"""Federated content-based image retrieval: one embedding learned by all sites, one index each.

A clinician holding an image asks "which of *our* earlier cases look like this?". The sites
train one embedding together (the only thing federated); after the run each site embeds its
own training images into an index kept in its site home
(:mod:`fedmed.explain.retrieval_index`), and ``fedmed retrieve --site-home DIR QUERY`` answers
from that index alone. Images, embeddings and the index never leave the site
(docs/retrieval.md).

Why a pack of its own, not an option of ``imaging-cls``: its model outputs an embedding, not a
logit; its label has three classes, not two; its metrics (mAP@10, precision@k) need the site's
gallery at scoring time, so its test split carries it (:class:`GalleryQueries`); and its
explanation is an index, not Grad-CAM. What it shares with imaging-cls — synthetic sites, real
folders, ``image-size``, ``augment``, the pretrained backbone and its cached encodings — it
inherits from :class:`~fedmed.tasks.imaging_pack.ImagingPack`.

Label (relevance). The synthetic sites give each image its lesion-size class
(:func:`fedmed.data.imaging_synth.lesion_size_class`: small, medium, large by the largest
object's area): more than two classes, so a match is relevant when it shows a lesion of the
same size class. Real site folders carry ``labels.csv`` as imaging-cls reads it (0/1): there
relevance is the binary label.

Loss: why not a contrastive or triplet loss. DP-SGD (Opacus) clips each example's gradient
and adds noise calibrated to one example's influence; that holds only if the batch loss is a
sum (mean) of terms each depending on one example and the parameters. A supervised-
contrastive or triplet loss couples examples (an anchor's term reads its positives and
negatives from the batch), so one patient's image moves the gradient of others and the
per-example clip no longer bounds its influence. The pack therefore learns the metric with
*proxies*: one learned vector per class, and a normalised-softmax loss (NormFace / Proxy-NCA
style) — the L2-normalised embedding of an image is scored against every proxy, times a fixed
scale :data:`SCALE`, and the loss is the cross-entropy with its class. Each example's term
depends on that example and the parameters only, so per-example clipping and the accountant's
unit (one patient's image) are exactly as in the classification packs. Images of a class are
pulled to their proxy and pushed from the others, which is what makes nearest neighbours share
a class.

Model: the imaging-cls backbone (the small from-scratch DenseNet, or ImageNet-pretrained
EfficientNet-Lite0 under ``backbone=efficientnet-lite0`` with its ``fine-tune`` schedule and
cached encodings) ending in :data:`EMBEDDING_DIM` units, then L2 normalisation
(:meth:`EmbeddingNet.embed`), then the proxies (a bias-free linear layer, which Opacus clips
per example like any linear layer).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedmed.config import Scalar
from fedmed.data.imaging_readers import LABELS_FILE, HeaderDeid, read_classification_folder
from fedmed.data.imaging_synth import SIZE_CLASSES, SiteImages, lesion_size_class
from fedmed.explain.retrieval_index import GalleryQueries, RetrievalIndexer, embed_dataset, nearest
from fedmed.tasks import register_task
from fedmed.tasks.base import SiteData
from fedmed.tasks.efficientnet_lite import FEATURES
from fedmed.tasks.imaging_backbone import LiteCut, encode, frozen_part
from fedmed.tasks.imaging_cls import build_classifier
from fedmed.tasks.imaging_pack import Arrays, ImagingPack

EMBEDDING_DIM = 16
SCALE = 5.0  # logit scale of the normalised softmax (a temperature of 0.2; 10 and 16 learnt worse)
CUTOFF = 10  # mAP@10 and precision@10
INDEXER = RetrievalIndexer()


class EmbeddingNet(nn.Module):
    """A backbone to :data:`EMBEDDING_DIM` units, L2-normalised, scored against class proxies."""

    def __init__(self, body: nn.Module, classes: int = len(SIZE_CLASSES)) -> None:
        super().__init__()
        self.body = body
        self.proxies = nn.Linear(EMBEDDING_DIM, classes, bias=False)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings: what the index holds and queries are compared with."""
        return nn.functional.normalize(self.body(inputs), dim=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return SCALE * self.proxies(self.embed(inputs))


def retrieval_scores(queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                     gallery_labels: torch.Tensor) -> dict[str, float]:  # fmt: skip
    """mAP@10, precision@1 and precision@10 (:data:`CUTOFF`) of each query (embeddings and
    labels) against the gallery, a match relevant when its label equals the query's.

    AP@k of one query = Σ_{i ≤ k} precision@i · rel_i / min(R, k), R = relevant images in the
    gallery (0 when R = 0), the usual truncated form: 1 when the first min(R, k) answers are all
    relevant."""
    if not len(queries) or not len(gallery):
        return dict.fromkeys(ImagingRetrievalTask.metrics, float("nan"))
    query_labels, gallery_labels = query_labels.reshape(-1), gallery_labels.reshape(-1)
    _, order = nearest(queries, gallery, CUTOFF)
    relevant = (gallery_labels[order] == query_labels[:, None]).double()
    ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float64)
    total = (gallery_labels[None, :] == query_labels[:, None]).sum(1).clamp(max=relevant.shape[1])
    average_precision = (relevant * relevant.cumsum(1) / ranks).sum(1) / total.clamp(min=1)
    return {"map_at_10": float(average_precision.mean()),
            "precision_at_1": float(relevant[:, 0].mean()),
            "precision_at_10": float(relevant.mean())}  # fmt: skip


@register_task("imaging-retrieval")
class ImagingRetrievalTask(ImagingPack):
    """Embed images so that nearest neighbours share the lesion-size class (module docstring)."""

    metrics = ("map_at_10", "precision_at_1", "precision_at_10")
    primary_metric = "map_at_10"
    default_lr = 0.05
    default_batch_size = 32
    default_local_epochs = 1
    site_marker = LABELS_FILE
    explainer = INDEXER
    pack_settings = (
        "image-size", "augment", "train-size", "backbone", "fine-tune", "backbone-norm",
    )
    given_settings: Mapping[str, Scalar] = {}

    def configure(self, settings: Mapping[str, Scalar]) -> None:
        super().configure(settings)
        self.given_settings = dict(settings)  # recorded in the index to rebuild the model

    def synthetic_split(self, images: SiteImages) -> tuple[np.ndarray, np.ndarray]:
        return images.images, np.array([lesion_size_class(m) for m in images.masks], np.int64)

    def read_site_folder(
        self, folder: Path, header_deid: HeaderDeid | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return read_classification_folder(folder, self.settings.image_size, header_deid)

    def test_split(self, site: str, arrays: Arrays, cache: Path) -> Dataset:
        """The site's test images as queries, its own training images as their gallery."""
        x_train, y_train, x_test, y_test = arrays
        return GalleryQueries(
            self.model_dataset(x_test, y_test, cache), x_test,
            self.model_dataset(x_train, y_train, cache), x_train,
            [f"{site}/train/{position:04d}" for position in range(len(x_train))],
        )  # fmt: skip

    def build_model(self) -> nn.Module:
        if not self.settings.pretrained:
            return EmbeddingNet(build_classifier(EMBEDDING_DIM))
        trainable = LiteCut.of(self.settings).trainable  # ends in imaging-cls's logit layer
        return EmbeddingNet(nn.Sequential(*trainable[:-1], nn.Linear(FEATURES, EMBEDDING_DIM)))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets.reshape(-1).long())

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        if not isinstance(dataset, GalleryQueries):
            raise TypeError("imaging-retrieval scores a site's test split (queries with the "
                            "site's gallery), not a bare dataset")  # fmt: skip
        model = getattr(model, "_module", model)  # an Opacus wrapper: the model it wraps
        return retrieval_scores(*embed_dataset(model, dataset.queries, device),
                                *embed_dataset(model, dataset.gallery, device))  # fmt: skip

    def explain(self, model: nn.Module, site_data: SiteData, out_dir: Path) -> list[Path]:
        """The site's index of its own training images (and a few query figures)."""
        about = {"task": self.name, "settings": dict(self.given_settings)}
        return INDEXER.write(model, site_data.test, site_data.site, Path(out_dir),
                                    self.explain_examples, about)  # fmt: skip

    def embed_images(self, model: nn.Module, images: np.ndarray) -> torch.Tensor:
        """Embeddings of images (n × H × W, normalised like the site's data) by ``model``,
        through the frozen part of a pretrained backbone when the schedule has one (a query is
        embedded as the gallery was, and never cached: nothing of it is kept)."""
        inputs = self.dataset(images, np.zeros(len(images))).tensors[0]
        if self.settings.encodes:
            inputs = encode(frozen_part(self.settings), inputs)
        model.eval()
        with torch.no_grad():
            return model.embed(inputs)
