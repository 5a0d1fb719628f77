"""ICD-style multi-label coding of de-identified clinical notes, at four hospitals.

Data flow (DESIGN.md §1): raw note → de-identification gate → tokenizer → model. The built-in
sites hold the raw synthetic notes of :mod:`fedmed.data.icd_synth` (26 codes, long-tailed,
negated mentions, per-hospital dialects, PHI in every note); :func:`load_site` hands them to
:func:`fedmed.data.text_admission.admitted_site_notes`, which runs the site's gate and caches
what it released. Only released text ever reaches :func:`encode`. The site home that holds the
gate's secret, quarantine and cache is ``data_dir`` when given, else
``<state>/gate/icd/<site>`` — not ``<state>/sites/<federation>/<site>``: the node creates that
folder whole on its first round and refuses one that already exists without a policy, and
packs load their data before that.

Tokenizer: lower-cased word tokens (digits folded to ``0``) *hashed* into a fixed vocabulary of
:data:`VOCAB_SIZE` ids (CRC-32; id 0 is padding). Every site gets the same ids for the same
words without sharing a vocabulary built from anyone's notes — a vocabulary would leak which
words (surrogate names included) a site's notes contain.

Model (:class:`CamlNet`): CAML (Mullenbach et al., NAACL 2018) — embedding, one convolution
over the words, then *per-code attention*: each code weighs the positions of the note on its
own and scores the weighted sum. Written with two ``nn.Linear`` layers over every position
(attention scores and per-position code scores, whose attention-weighted sum equals CAML's
``w_l · Σ α_lt h_t + b_l``), so Opacus computes per-example gradients with its standard
layers — no custom layer, no BatchNorm. The attention weights are the explanation:
:func:`attention_evidence` returns, per predicted code, the spans of released text the code
attended to most (each span is the convolution's receptive field around the position).

Metrics: ``micro_f1`` (primary; every note-code decision counts once, so frequent codes
dominate), ``macro_f1`` (the mean over codes that occur in the evaluated notes: the long tail
counts as much as the head) and ``precision_at_5`` (CAML's P@k: correct codes among the five
highest-scoring, divided by 5 — with ~3 codes per note its ceiling is about 0.6). Decisions at
probability 0.5.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import Dataset

from fedmed.data.icd_notes import NOTES_FILE, read_site_notes
from fedmed.data.icd_synth import (
    CODE_IDS,
    N_TEST_DEFAULT,
    N_TRAIN_DEFAULT,
    SITES,
    builtin_site_notes,
    describe,
)
from fedmed.data.site_folders import site_folders
from fedmed.data.text_admission import Admission, AdmittedNote, admitted_site_notes
from fedmed.errors import ConfigError, DataError
from fedmed.explain.outcome import markdown_code_span
from fedmed.state import state_dir
from fedmed.tasks import register_task
from fedmed.tasks.base import SiteData, TaskPack, fingerprint_arrays, predict

VOCAB_SIZE = 4096
MAX_TOKENS = 192
EMBED_DIM = 64
CHANNELS = 64
KERNEL = 7  # the receptive field: "no evidence of <code>" and "<code> ruled out" fit in it
THRESHOLD = 0.5
TOP_K = 5
TOKEN_RE = re.compile(r"[a-z0-9]+")


# ------------------------------------------------------------------------------ tokenizer
def tokenize(text: str) -> list[tuple[str, int, int]]:
    """Word tokens of ``text`` with their character offsets, normalised for hashing."""
    return [(re.sub(r"\d", "0", m.group()), m.start(), m.end())
            for m in TOKEN_RE.finditer(text.lower())]


def token_id(token: str) -> int:
    """The hashed id of a normalised token, in ``1 .. VOCAB_SIZE - 1`` (0 is padding)."""
    return 1 + zlib.crc32(token.encode("utf-8")) % (VOCAB_SIZE - 1)


def encode(texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """A (notes × ``max_tokens``) int64 tensor of token ids, zero-padded, truncated at the end."""
    ids = torch.zeros((len(texts), max_tokens), dtype=torch.int64)
    for row, text in enumerate(texts):
        tokens = [token_id(tok) for tok, _, _ in tokenize(text)[:max_tokens]]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    return ids


def multi_hot(labels: Sequence[Sequence[str]], codes: Sequence[str] = CODE_IDS) -> torch.Tensor:
    """(notes × codes) float32 targets; DataError naming an unknown code."""
    index = {code: i for i, code in enumerate(codes)}
    targets = torch.zeros((len(labels), len(codes)), dtype=torch.float32)
    for row, note_labels in enumerate(labels):
        for code in note_labels:
            if code not in index:
                raise DataError(f"unknown code {code!r}; known codes: {', '.join(codes)}")
            targets[row, index[code]] = 1.0
    return targets


class NotesDataset(Dataset):
    """Released notes as (token ids, multi-hot codes) pairs; keeps the text for explanations.

    A model that reads the notes differently (``fedmed.tasks.icd_minilm``) overrides
    :meth:`encode` and :meth:`identity`; labels, texts and ids stay as here. ``cache_dir``
    is the site's private folder of admitted notes, where an encoding too slow to repeat in
    every process may be kept.
    """

    def __init__(self, notes: Sequence[AdmittedNote], cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self.note_ids = [note.note_id for note in notes]
        self.texts = [note.text for note in notes]
        self.targets = multi_hot([note.labels for note in notes])
        self.inputs = self.encode(self.texts)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """The model inputs of ``texts``: hashed token ids."""
        return encode(texts)

    def identity(self) -> list[np.ndarray]:
        """Arrays that identify exactly what was trained on (the site's data fingerprint)."""
        return [self.inputs.numpy(), self.targets.numpy()]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


# ------------------------------------------------------------------------------ model
class CamlNet(nn.Module):
    """Token ids (batch × tokens) → code logits (batch × codes). DP-SGD ready."""

    def __init__(self, num_codes: int = len(CODE_IDS), dropout: float = 0.2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, EMBED_DIM)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(EMBED_DIM, CHANNELS, KERNEL, padding=KERNEL // 2)
        self.attention = nn.Linear(CHANNELS, num_codes)  # per-code attention scores
        self.output = nn.Linear(CHANNELS, num_codes)  # per-code, per-position scores

    def attend(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch × codes) and attention weights (batch × tokens × codes)."""
        hidden = self.conv(self.dropout(self.embedding(ids)).transpose(1, 2))
        hidden = torch.tanh(hidden).transpose(1, 2)  # batch × tokens × channels
        scores = self.attention(hidden).masked_fill((ids == 0).unsqueeze(-1), -1e4)
        weights = torch.softmax(scores, dim=1)
        logits = (weights * self.output(hidden)).sum(dim=1)
        return logits, weights

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.attend(ids)[0]

    def evidence(self, text: str, top_k: int = 3) -> list[CodeEvidence]:
        """:func:`evidence_from_attention` of ``text``; a span covers the convolution's receptive
        field around an attended word (what the model saw there)."""
        tokens = tokenize(text)[:MAX_TOKENS]
        if not tokens:
            return []
        self.eval()
        with torch.no_grad():
            logits, weights = self.attend(encode([text]).to(next(self.parameters()).device))
        offsets = [(start, end) for _, start, end in tokens]
        return evidence_from_attention(text, offsets, logits[0], weights[0], top_k, KERNEL // 2)


# ------------------------------------------------------------------------------ metrics
def coding_scores(logits: torch.Tensor, targets: torch.Tensor, k: int = TOP_K
                  ) -> dict[str, float]:
    """micro/macro F1 at probability 0.5 and precision@k (see the module docstring)."""
    truth = targets.numpy().astype(int)
    predicted = (torch.sigmoid(logits) >= THRESHOLD).numpy().astype(int)
    present = np.flatnonzero(truth.sum(axis=0) > 0)
    macro = (float(f1_score(truth, predicted, labels=present, average="macro",
                            zero_division=0)) if len(present) else float("nan"))
    top = torch.topk(logits, min(k, logits.shape[1]), dim=1).indices
    hits = targets.gather(1, top).sum(dim=1) / k
    return {
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": macro,
        "precision_at_5": float(hits.mean()) if len(hits) else float("nan"),
    }


# ------------------------------------------------------------------------------ evidence
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


def attention_evidence(model: CamlNet, text: str, top_k: int = 3) -> list[CodeEvidence]:
    """Per predicted code (probability ≥ 0.5), the ``top_k`` highest-attention spans of ``text``
    (a released note), as :class:`CamlNet` reads it."""
    return model.evidence(text, top_k)


def evidence_from_attention(text: str, offsets: Sequence[tuple[int, int]], logits: torch.Tensor,
                            weights: torch.Tensor, top_k: int, reach: int
                            ) -> list[CodeEvidence]:
    """The evidence of one note from any per-code attention model.

    ``offsets`` are the character spans of the model's input positions (words or subwords),
    ``logits`` its code scores (codes) and ``weights`` its attention (positions × codes; rows
    past ``len(offsets)`` are padding and ignored). For each code with probability ≥ 0.5, in
    order of probability, the ``top_k`` most attended positions become spans of ``text``
    reaching ``reach`` positions either side, clipped to the note; overlapping spans of one
    code are merged, keeping the larger weight.
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
        evidence.append(CodeEvidence(CODE_IDS[code_index], describe(CODE_IDS[code_index]),
                                     probability, tuple(spans)))
    return evidence


def evidence_records(model: nn.Module, dataset: NotesDataset, n: int = 5,
                     top_k: int = 3) -> list[dict[str, Any]]:
    """The evidence of the first ``n`` notes of ``dataset``: per note its pseudonymous id, true
    codes and the model's ``evidence`` — computed once, then written as JSON and Markdown."""
    return [
        {"note": note_id, "true_codes": [CODE_IDS[i] for i in np.flatnonzero(target.numpy())],
         "predicted": [asdict(item) for item in model.evidence(text, top_k)]}
        for note_id, text, target in zip(dataset.note_ids[:n], dataset.texts[:n],
                                         dataset.targets[:n], strict=True)
    ]


def save_evidence(model: CamlNet, dataset: NotesDataset, out_dir: str | Path, site: str,
                  n: int = 5, top_k: int = 3) -> Path:
    """Write the evidence for the first ``n`` notes of ``dataset`` to ``evidence-<site>.json``.

    The file holds released (de-identified) text only, under the notes' pseudonymous ids.
    """
    return _write_evidence_json(evidence_records(model, dataset, n, top_k), out_dir, site)


def _write_evidence_json(records: list[dict[str, Any]], out_dir: str | Path, site: str) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"evidence-{site}.json"
    path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return path


def save_evidence_markdown(records: list[dict[str, Any]], out_dir: str | Path, site: str) -> Path:
    """``evidence-<site>.md``: the records of :func:`evidence_records` for a person to read.

    Per note, each predicted code with its description and probability, then the spans it
    attended to most, quoted, with their attention weight — what a coder would check first.
    Spans are released text; they are shown in code spans so no note text is read as Markdown.
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"evidence-{site}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


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


# ------------------------------------------------------------------------------ pack
def default_site_home(site: str) -> Path:
    """Where a simulated site's gate keeps its secret, quarantine and admitted notes."""
    return state_dir("gate", "icd", site)


def admit_site(site: str, site_home: Path, n_train: int = N_TRAIN_DEFAULT,
               n_test: int = N_TEST_DEFAULT) -> Admission:
    """The built-in raw notes of ``site`` through its gate (cached after the first call).

    The built-in sites are one fixed draw: test notes never depend on the training seed
    (the task-pack contract), and one admission per site is cached for every seed and run.
    """
    if site not in SITES:
        raise ConfigError(f"unknown icd site {site!r}; sites: {', '.join(SITES)}")
    return admitted_site_notes("icd", site, site_home, builtin_site_notes(site, n_train, n_test))


@register_task("icd")
class IcdTask(TaskPack):
    """Multi-label ICD-style coding of released clinical notes with a CAML-style CNN."""

    metrics = ("micro_f1", "macro_f1", "precision_at_5")
    primary_metric = "micro_f1"
    default_sites = tuple(SITES)
    default_lr = 0.2
    default_batch_size = 16
    default_local_epochs = 2
    codes = CODE_IDS
    notes_dataset: type[NotesDataset] = NotesDataset  # how the model reads a released note
    explanation_kind = "attention evidence per predicted code (JSON and Markdown)"

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        if data_dir is None:
            return list(self.default_sites)
        return site_folders(Path(data_dir), NOTES_FILE)

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        """A built-in site, or with ``data_dir`` the hospital's own ``<site>/notes.jsonl``
        (:mod:`fedmed.data.icd_notes`); either way through the site's gate first."""
        if data_dir is None:
            return self.load_builtin_site(site, default_site_home(site))
        raw = read_site_notes(Path(data_dir) / site / NOTES_FILE, self.codes)
        return self.site_data(site, admitted_site_notes("icd", site, default_site_home(site), raw))

    def load_builtin_site(self, site: str, gate_home: Path) -> SiteData:
        """A built-in site with its gate's files under ``gate_home`` (tests keep their own)."""
        return self.site_data(site, admit_site(site, gate_home))

    def site_data(self, site: str, admission: Admission) -> SiteData:
        """The released notes of ``admission`` as the model reads them."""
        folder = admission.cache_file.parent
        train, test = (self.notes_dataset(admission.split(n), folder) for n in ("train", "test"))
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"{admission.cache_file}: the gate released no "
                            f"{'training' if len(train) == 0 else 'test'} notes for {site}")
        return SiteData(
            site=site, train=train, val=None, test=test,
            fingerprint=fingerprint_arrays(train.identity() + test.identity()),
        )

    def build_model(self) -> nn.Module:
        return CamlNet(len(self.codes))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy summed over codes, averaged over notes.

        Summed, not averaged, over codes: each code is its own binary decision, and a mean
        would shrink every gradient by the number of codes (26), so learning rates would
        have to grow with the code set.
        """
        per_code = nn.functional.binary_cross_entropy_with_logits(
            outputs, targets.float(), reduction="none")
        return per_code.sum(dim=1).mean()

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        logits, targets = predict(model, dataset, device)
        return coding_scores(logits, targets)

    def explain(self, model: nn.Module, site_data: SiteData, out_dir: Path) -> list[Path]:
        """Attention evidence of the first test notes, as JSON (for tools) and Markdown (for
        people); both hold released text only."""
        if not hasattr(model, "evidence") or not isinstance(site_data.test, NotesDataset):
            raise ConfigError("icd explanations need a model with per-code attention evidence "
                              "and the pack's NotesDataset")
        records = evidence_records(model, site_data.test, n=self.explain_examples)
        return [_write_evidence_json(records, out_dir, site_data.site),
                save_evidence_markdown(records, out_dir, site_data.site)]
