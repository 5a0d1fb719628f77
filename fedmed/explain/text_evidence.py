"""Text evidence for a per-code attention model: which words of a note each predicted code
read most, written as JSON (for tools) and Markdown (for people).

A coder checking a federated ICD model wants to see, for each code it predicts, the stretch
of the note that drove it ("no evidence of pneumonia" must not code pneumonia). Per-code
attention models (CAML, ``fedmed.tasks.icd_model``; its MiniLM variant) weigh every input
position for every code; :func:`evidence_from_attention` turns those weights into spans of
the note. Any model that offers ``evidence(text, top_k)`` (:class:`EvidenceModel`) and test
examples that keep their notes (:class:`EvidenceNotes`) can be explained by
:class:`TextEvidence`.

The codes and their descriptions default to the built-in code set of
:mod:`fedmed.data.icd_synth`. Notes are released (de-identified) text under pseudonymous
ids; spans are quoted in Markdown code spans so no note text is read as Markdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedmed.data.icd_synth import CODE_IDS, describe
from fedmed.errors import ConfigError
from fedmed.explain.base import Explainer, markdown_code_span, write_json_and_markdown

THRESHOLD = 0.5  # a code is predicted, and explained, at probability ≥ 0.5


@dataclass(frozen=True)
class EvidenceSpan:
    """A span of released text ``text[start:end]`` and the attention it received."""

    start: int
    end: int
    text: str
    weight: float


@dataclass(frozen=True)
class CodeEvidence:
    """A predicted code, its probability and the spans it attended to most."""

    code: str
    description: str
    probability: float
    spans: tuple[EvidenceSpan, ...]


@runtime_checkable
class EvidenceModel(Protocol):
    """A model that explains its codes on one note (:func:`evidence_from_attention`)."""

    def evidence(self, text: str, top_k: int = 3) -> list[CodeEvidence]: ...


@runtime_checkable
class EvidenceNotes(Protocol):
    """Test examples that keep what the evidence files show: ids, released texts, targets."""

    note_ids: list[str]
    texts: list[str]
    targets: torch.Tensor


def evidence_from_attention(text: str, offsets: Sequence[tuple[int, int]], logits: torch.Tensor,
                            weights: torch.Tensor, top_k: int, reach: int,
                            codes: Sequence[str] = CODE_IDS) -> list[CodeEvidence]:
    """The evidence of one note from any per-code attention model.

    ``offsets`` are the character spans of the model's input positions (words or subwords),
    ``logits`` its scores of ``codes`` and ``weights`` its attention (positions × codes; rows
    past ``len(offsets)`` are padding and ignored). For each code with probability ≥ 0.5, in
    order of probability, the ``top_k`` most attended positions become spans of ``text``
    reaching ``reach`` positions either side, clipped to the note; overlapping spans of one
    code are merged, keeping the larger weight. Codes are described by
    :func:`fedmed.data.icd_synth.describe`.
    """
    probabilities = torch.sigmoid(logits).cpu()
    weights = weights[: len(offsets)].cpu()
    evidence = []
    for code_index in torch.argsort(probabilities, descending=True).tolist():
        probability = float(probabilities[code_index])
        if probability < THRESHOLD:
            break
        column = weights[:, code_index]
        best = torch.topk(column, min(top_k, len(offsets))).indices.tolist()
        spans = _merge([_window(text, offsets, position, float(column[position]), reach)
                        for position in best])
        code = codes[code_index]
        evidence.append(CodeEvidence(code, describe(code), probability, tuple(spans)))
    return evidence


def evidence_records(model: EvidenceModel, notes: EvidenceNotes, n: int = 5, top_k: int = 3,
                     codes: Sequence[str] = CODE_IDS) -> list[dict[str, Any]]:
    """The evidence of the first ``n`` notes: per note its pseudonymous id, true codes and the
    model's ``evidence`` — computed once, then written as JSON and Markdown."""
    return [
        {"note": note_id, "true_codes": [codes[i] for i in np.flatnonzero(target.numpy())],
         "predicted": [asdict(item) for item in model.evidence(text, top_k)]}
        for note_id, text, target in zip(notes.note_ids[:n], notes.texts[:n],
                                         notes.targets[:n], strict=True)
    ]


class TextEvidence(Explainer):
    """Per-code attention evidence of the first test notes: ``evidence-<site>.json`` and
    ``evidence-<site>.md``, both holding released text only."""

    kind = "attention evidence per predicted code (JSON and Markdown)"

    def __init__(self, codes: Sequence[str] = CODE_IDS, top_k: int = 3) -> None:
        self.codes = tuple(codes)
        self.top_k = top_k

    def explain(
        self, model: nn.Module, examples: Dataset, site: str, out_dir: Path, n: int = 4
    ) -> list[Path]:
        if not isinstance(model, EvidenceModel) or not isinstance(examples, EvidenceNotes):
            raise ConfigError("text evidence needs a model with per-code attention evidence "
                              "and test examples that keep their notes (the icd NotesDataset)")
        records = evidence_records(model, examples, n, self.top_k, self.codes)
        return write_evidence(records, out_dir, site)


def write_evidence(records: list[dict[str, Any]], out_dir: str | Path, site: str) -> list[Path]:
    """``evidence-<site>.json`` and ``evidence-<site>.md`` of :func:`evidence_records`."""
    return write_json_and_markdown(records, evidence_markdown(records, site), out_dir,
                                   f"evidence-{site}")


def evidence_markdown(records: list[dict[str, Any]], site: str) -> list[str]:
    """The lines of ``evidence-<site>.md``: the records of :func:`evidence_records` for a
    person to read.

    Per note, each predicted code with its description and probability, then the spans it
    attended to most, quoted, with their attention weight — what a coder would check first.
    """
    lines = [f"# ICD coding evidence: {site}", "",
             "Attention evidence of the final model on the first test notes (released text only).",
             ""]
    for record in records:
        lines += [f"## Note {record['note']}", "",
                  f"True codes: {', '.join(record['true_codes']) or 'none'}", ""]
        if not record["predicted"]:
            lines += ["No code predicted (every probability < 0.5).", ""]
        for item in record["predicted"]:
            lines.append(f"- **{item['code']}** {item['description']} "
                         f"(p = {item['probability']:.2f})")
            lines += [f"  - `{markdown_code_span(span['text'])}` (attention {span['weight']:.2f})"
                      for span in item["spans"]]
        lines.append("")
    return lines


def _window(text: str, offsets: Sequence[tuple[int, int]], position: int, weight: float,
            reach: int) -> EvidenceSpan:
    start = offsets[max(0, position - reach)][0]
    end = offsets[min(len(offsets) - 1, position + reach)][1]
    return EvidenceSpan(start, end, text[start:end], weight)


def _merge(spans: list[EvidenceSpan]) -> list[EvidenceSpan]:
    merged: list[EvidenceSpan] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start <= merged[-1].end:
            last = merged[-1]
            end = max(last.end, span.end)
            text = last.text + span.text[last.end - span.start:] if end > last.end else last.text
            merged[-1] = EvidenceSpan(last.start, end, text, max(last.weight, span.weight))
        else:
            merged.append(span)
    return sorted(merged, key=lambda s: -s.weight)
