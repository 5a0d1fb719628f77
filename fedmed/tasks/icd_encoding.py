"""How the ``icd`` pack reads a released note: hashed word tokens, multi-hot codes, dataset.

Tokenizer: lower-cased word tokens (digits folded to ``0``) *hashed* into a fixed vocabulary of
:data:`VOCAB_SIZE` ids (CRC-32; id 0 is padding). Every site gets the same ids for the same
words without sharing a vocabulary built from anyone's notes — a vocabulary would leak which
words (surrogate names included) a site's notes contain.

:class:`NotesDataset` pairs each released note's token ids with its multi-hot codes and keeps
the note's text and pseudonymous id for the explanations
(:mod:`fedmed.explain.text_evidence`). This module registers no task.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fedmed.data.icd_synth import CODE_IDS
from fedmed.data.text_admission import AdmittedNote
from fedmed.errors import DataError

VOCAB_SIZE = 4096
MAX_TOKENS = 192
TOKEN_RE = re.compile(r"[a-z0-9]+")


def tokenize(text: str, limit: int | None = None) -> list[tuple[str, int, int]]:
    """Word tokens of ``text`` with their character offsets, normalised for hashing; the first
    ``limit`` only when given. The model reads :data:`MAX_TOKENS` tokens, so the encoders stop
    there: a released note may be megabytes long (the gate scrubs long notes window by
    window), and listing all its tokens would cost memory in proportion to it."""
    matches = islice(TOKEN_RE.finditer(text.lower()), limit)
    return [(re.sub(r"\d", "0", m.group()), m.start(), m.end()) for m in matches]


def token_id(token: str) -> int:
    """The hashed id of a normalised token, in ``1 .. VOCAB_SIZE - 1`` (0 is padding)."""
    return 1 + zlib.crc32(token.encode("utf-8")) % (VOCAB_SIZE - 1)


def encode(texts: Sequence[str], max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """A (notes × ``max_tokens``) int64 tensor of token ids, zero-padded, truncated at the end."""
    ids = torch.zeros((len(texts), max_tokens), dtype=torch.int64)
    for row, text in enumerate(texts):
        tokens = [token_id(tok) for tok, _, _ in tokenize(text, max_tokens)]
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
