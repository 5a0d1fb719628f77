"""The explainer contract, and what every explainer shares.

A task pack declares its explainer (``TaskPack.explainer``, :mod:`fedmed.tasks.base`); the
node runs it on the run's last evaluation (:mod:`fedmed.clients.explanations`). Like MONAI's
:class:`monai.visualize.CAMBase`, :class:`Explainer` is a small abstract base with one
subclass per method, each in its own module of this package:

- :class:`fedmed.explain.gradcam.GradCam`: Grad-CAM overlays of an image classifier;
- :class:`fedmed.explain.mask_overlay.MaskOverlay`: predicted vs true segmentation masks;
- :class:`fedmed.explain.ecg_saliency.EcgSaliency`: 1-D Grad-CAM under an ECG trace;
- :class:`fedmed.explain.text_evidence.TextEvidence`: per-code attention evidence of a note;
- :class:`fedmed.explain.text_review.PhiReview`: a PHI tagger's found, missed and extra spans.
- :class:`fedmed.explain.tabular_shap.TabularShap`: SHAP importance and waterfalls of a
  tabular risk model.

An explainer knows models, tensors and datasets, never Flower, the node or the task packs:
whatever it needs from a pack (the layer to explain, the class names, the pack's Dice, its
tagger) is passed to its constructor. It may draw raw test inputs: the files stay in the site
home (:mod:`fedmed.explain.outcome`). It must leave the model it explains unchanged.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Explainer(ABC):
    """One way to explain a model on a few of a site's test examples.

    ``kind`` says what the files are, for a person reading the run report (e.g.
    ``"Grad-CAM overlays (PNG)"``); a subclass sets it as a class attribute.
    """

    @property
    @abstractmethod
    def kind(self) -> str:
        """What the explainer's files are, in words."""

    @abstractmethod
    def explain(
        self, model: nn.Module, examples: Dataset, site: str, out_dir: Path, n: int = 4
    ) -> list[Path]:
        """Explain ``model`` on the first ``n`` of ``examples`` (the site's test split).

        Writes into ``out_dir`` (created if needed) files named after ``site`` and returns
        them; none when ``examples`` is empty. Raises on a model or dataset it cannot explain.
        """


class PictureExplainer(Explainer):
    """An explainer that draws one picture per example: ``<prefix>-<site>-<index>.png``.

    A subclass sets ``prefix`` and implements :meth:`figures`; this class picks the examples,
    makes the folder (only once the figures exist) and saves them.
    """

    prefix: ClassVar[str]

    def explain(
        self, model: nn.Module, examples: Dataset, site: str, out_dir: Path, n: int = 4
    ) -> list[Path]:
        batch = first_examples(examples, n)
        if batch is None:
            return []
        inputs, targets = batch
        captions = [f"{site} #{index}" for index in range(len(inputs))]
        figures = self.figures(model, inputs, targets, captions)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{self.prefix}-{site}-{index}.png" for index in range(len(figures))]
        for figure, path in zip(figures, paths, strict=True):
            figure.savefig(path)
        return paths

    @abstractmethod
    def figures(
        self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, captions: list[str]
    ) -> list[Figure]:
        """One figure per input, its title starting with the input's caption (``site #i``)."""


def first_examples(examples: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The inputs and targets of the first ``n`` items of ``examples``, each stacked into one
    tensor; None when there are none."""
    count = min(n, len(examples))  # type: ignore[arg-type]
    if count < 1:
        return None
    items = [examples[index] for index in range(count)]
    return torch.stack([inputs for inputs, _ in items]), torch.stack(
        [torch.as_tensor(target) for _, target in items])


def explained_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode, to explain without touching the original.

    MONAI registers forward and backward hooks on the layer it explains and never removes
    them, and a node may go on training or wrapping the same model (Opacus adds its own
    hooks) after writing explanations.
    """
    return copy.deepcopy(model).cpu().eval()


def markdown_code_span(text: str) -> str:
    """``text`` safe inside a Markdown code span: one line, no backticks (explanation files
    quote note text this way so none of it is read as Markdown)."""
    return " ".join(text.split()).replace("`", "'")


def write_json_and_markdown(
    records: Sequence[dict[str, Any]], markdown: Sequence[str], out_dir: str | Path, stem: str
) -> list[Path]:
    """``<stem>.json`` (the records, for tools) and ``<stem>.md`` (``markdown``'s lines, for
    people) in ``out_dir`` (created if needed); returns both paths, JSON first."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{stem}.json"
    data.write_text(json.dumps(list(records), indent=2) + "\n", encoding="utf-8")
    text = out / f"{stem}.md"
    text.write_text("\n".join(markdown), encoding="utf-8")
    return [data, text]
