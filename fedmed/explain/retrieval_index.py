"""A site's retrieval index: its own images, embedded by the federated model, kept at the site.

Content-based image retrieval across hospitals (``imaging-retrieval``, docs/retrieval.md)
federates only the *embedding model*. After the run each site embeds its **own** training
images with the final model and keeps the result here, in its site home beside its other
explanations (``<site home>/runs/<run>/explanations/``, :mod:`fedmed.explain.outcome`); a
query (``fedmed retrieve --site-home DIR QUERY``) is answered from that index alone. No
image, embedding or fingerprint of a site ever reaches the coordinator or another site: the
node writes these files the way it writes Grad-CAM overlays, and reports back only their
count and folder.

Files of one index (:class:`SiteIndex`):

- ``retrieval-index.json``: what the index is — the site, the task and its settings (to rebuild
  the model a query is embedded with), the distance, and one record per gallery image (``id``:
  ``<site>/train/<position>``; ``fingerprint``: :func:`image_fingerprint` of the image as the
  model reads it, so anyone holding the site's data can check which images an index holds and
  that no other site's image is among them; ``label``: its class);
- ``retrieval-index.npy``: the embeddings (n × d, float32, unit length), rows in record order;
- ``retrieval-model.pt``: the state dict of the model that made them (the federated model: it
  left the site anyway, and a query must be embedded by the same model as the gallery);
- ``retrieval-<site>-<i>.png``: the first few test queries beside their nearest matches, the
  figure a clinician looks at (patient images: they stay in the site home like Grad-CAM's).

All are written with mode 0600 (:func:`fedmed.data.private_files.write_private`): the index is
derived from patient images. Distances are Euclidean between L2-normalised embeddings
(0 = same direction, 2 = opposite), which rank exactly as cosine similarity does.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from fedmed.data.private_files import write_private
from fedmed.errors import DataError
from fedmed.explain.base import Explainer, explained_copy
from fedmed.inference import predict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INDEX_FILE = "retrieval-index.json"
EMBEDDINGS_FILE = "retrieval-index.npy"
MODEL_FILE = "retrieval-model.pt"
FORMAT = 1
DISTANCE = "euclidean between L2-normalised embeddings"
FIGURE_MATCHES = 5  # nearest gallery images drawn beside each query


def image_fingerprint(image: np.ndarray | torch.Tensor) -> str:
    """SHA-256 (first 32 hex digits) of one image as the model reads it (float32 pixels and
    shape): equal images, equal fingerprints, at any site that holds them."""
    array = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:32]


class GalleryQueries(Dataset):
    """A site's query split (its test images, as the model reads them) with the gallery it is
    searched against: the same site's own training images (model inputs, raw images, ids).

    The pack's test split is this object, so whoever scores a model on a site's test split
    (the node, the studies' local, pooled and leave-one-site-out rows) retrieves from that
    site's own gallery, never a pooled one."""

    def __init__(self, queries: Dataset, query_images: np.ndarray, gallery: Dataset,
                 gallery_images: np.ndarray, gallery_ids: Sequence[str]) -> None:  # fmt: skip
        if len(gallery_ids) != len(gallery_images):
            raise ValueError("one id per gallery image")
        self.queries = queries
        self.query_images = query_images
        self.gallery = gallery
        self.gallery_images = gallery_images
        self.gallery_ids = tuple(gallery_ids)

    def __len__(self) -> int:
        return len(self.queries)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.queries[index]


def embed_dataset(model: nn.Module, dataset: Dataset, device: torch.device,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``model.embed`` of every input of ``dataset`` (n × d, on the CPU) and its targets."""
    embed = getattr(model, "embed", None)
    if not callable(embed):
        raise TypeError(f"{type(model).__name__} has no embed(inputs) method to index with")
    return predict(model, dataset, device, batch_size, forward=embed)


def nearest(
    queries: torch.Tensor, gallery: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and gallery positions of each query's ``k`` nearest gallery rows, nearest
    first (ties keep gallery order, so results are deterministic)."""
    distances = torch.cdist(queries.float()[None], gallery.float()[None])[0]
    order = torch.argsort(distances, dim=1, stable=True)[:, : min(k, len(gallery))]
    return torch.gather(distances, 1, order), order


@dataclass(frozen=True)
class Match:
    """One answer to a query: its rank (1 = nearest), gallery record and distance."""

    rank: int
    id: str
    fingerprint: str
    label: int
    distance: float


@dataclass(frozen=True)
class SiteIndex:
    """One site's index (module docstring): embeddings of its own images and their records."""

    site: str
    about: Mapping[str, Any]  # the task and settings that rebuild the embedding model
    embeddings: np.ndarray
    ids: tuple[str, ...]
    fingerprints: tuple[str, ...]
    labels: tuple[int, ...]

    def search(self, query: torch.Tensor, k: int) -> list[Match]:
        """The ``k`` gallery records nearest to one query embedding (d)."""
        distances, order = nearest(query.reshape(1, -1), torch.from_numpy(self.embeddings), k)
        return [Match(rank, self.ids[i], self.fingerprints[i], self.labels[i], float(d))
                for rank, (i, d) in enumerate(zip(order[0].tolist(), distances[0].tolist(),
                                                  strict=True), start=1)]  # fmt: skip

    def save(self, folder: Path, model: nn.Module) -> list[Path]:
        """Write the index and ``model``'s state dict into ``folder``; returns the files."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        manifest = {
            "format": FORMAT, "site": self.site, **self.about, "distance": DISTANCE,
            "count": len(self.ids), "dim": int(self.embeddings.shape[1]),
            "embeddings": EMBEDDINGS_FILE, "model": MODEL_FILE,
            "records": [{"id": i, "fingerprint": f, "label": label}
                        for i, f, label in zip(self.ids, self.fingerprints, self.labels,
                                               strict=True)],
        }  # fmt: skip
        embeddings, weights = io.BytesIO(), io.BytesIO()
        np.save(embeddings, self.embeddings)
        torch.save(model.state_dict(), weights)
        files = {INDEX_FILE: json.dumps(manifest, indent=1).encode(),
                 EMBEDDINGS_FILE: embeddings.getvalue(), MODEL_FILE: weights.getvalue()}
        for name, content in files.items():
            write_private(folder / name, content)
        return [folder / name for name in files]

    @classmethod
    def load(cls, folder: Path) -> tuple[SiteIndex, dict[str, torch.Tensor]]:
        """The index in ``folder`` and the model state dict it was made with; DataError
        naming the file when one is missing or does not fit the others."""
        path = folder / INDEX_FILE
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            records = manifest["records"]
            embeddings = np.load(folder / manifest["embeddings"], allow_pickle=False)
            state = torch.load(folder / manifest["model"], map_location="cpu", weights_only=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise DataError(f"{path}: not a readable retrieval index ({exc})") from None
        if manifest.get("format") != FORMAT or embeddings.shape[0] != len(records):
            raise DataError(f"{path}: index format or record count does not match its files")
        about = {key: manifest[key] for key in ("task", "settings") if key in manifest}
        index = cls(
            site=str(manifest["site"]), about=about, embeddings=embeddings.astype(np.float32),
            ids=tuple(r["id"] for r in records),
            fingerprints=tuple(r["fingerprint"] for r in records),
            labels=tuple(int(r["label"]) for r in records),
        )  # fmt: skip
        return index, state


class RetrievalIndexer(Explainer):
    """Indexes a site's own training images with the final model, and draws a few queries.

    ``examples`` must be the site's :class:`GalleryQueries` (the pack's test split) and the
    model must have ``embed(inputs)``; :meth:`write` also records ``about`` (task, settings)."""

    kind = "retrieval index of the site's own training images, and query figures (PNG)"

    def explain(
        self, model: nn.Module, examples: Dataset, site: str, out_dir: Path, n: int = 4
    ) -> list[Path]:
        return self.write(model, examples, site, out_dir, n, about={})

    def write(self, model: nn.Module, examples: Dataset, site: str, out_dir: Path, n: int,
              about: Mapping[str, Any]) -> list[Path]:  # fmt: skip
        if not isinstance(examples, GalleryQueries):
            raise TypeError("a retrieval index needs the site's GalleryQueries test split")
        model = explained_copy(model)
        cpu = torch.device("cpu")
        gallery, labels = embed_dataset(model, examples.gallery, cpu)
        index = SiteIndex(
            site=site, about=dict(about), embeddings=gallery.numpy().astype(np.float32),
            ids=examples.gallery_ids,
            fingerprints=tuple(image_fingerprint(image) for image in examples.gallery_images),
            labels=tuple(int(label) for label in labels.reshape(-1).tolist()),
        )  # fmt: skip
        files = index.save(Path(out_dir), model)
        count = min(n, len(examples))
        if not count:
            return files
        queries, targets = embed_dataset(model, Subset(examples.queries, range(count)), cpu)
        for position in range(count):
            figure = query_figure(examples, index, position, queries[position],
                                  f"{site} #{position}: label {int(targets[position])}")
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
            path = Path(out_dir) / f"retrieval-{site}-{position}.png"
            write_private(path, buffer.getvalue())
            files.append(path)
        return files


def query_figure(examples: GalleryQueries, index: SiteIndex, position: int,
                 query: torch.Tensor, caption: str) -> Figure:  # fmt: skip
    """Query ``position`` of ``examples`` (embedded as ``query``) and its
    :data:`FIGURE_MATCHES` nearest gallery images, each titled with its label and distance."""
    from matplotlib.figure import Figure  # matplotlib: only when drawing

    matches = index.search(query, FIGURE_MATCHES)
    rows = {record: row for row, record in enumerate(examples.gallery_ids)}
    panels = [(examples.query_images[position], "query")]
    panels += [(examples.gallery_images[rows[m.id]], f"{m.rank}: label {m.label}\n"
                f"d={m.distance:.2f}") for m in matches]  # fmt: skip
    figure = Figure(figsize=(1.3 * len(panels), 1.8), dpi=100)
    for ax, (image, title) in zip(figure.subplots(1, len(panels)), panels, strict=True):
        ax.imshow(np.asarray(image), cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=6)
        ax.set_axis_off()
    figure.suptitle(f"{caption}; nearest images of the site's own index", fontsize=7)
    return figure
