"""What every PHI tagger offers, and the recall-biased decoding they share.

A tagger turns note texts into PHI spans. Two implementations exist (BiLSTM-CRF in
:mod:`fedmed.deid.bilstm_crf`, MiniLM in :mod:`fedmed.deid.transformer_tagger`); the
Presidio engine, the evaluation and the CLI only see this interface, and
:func:`fedmed.deid.taggers.load_tagger` finds one by name or checkpoint path (the shipped
BiLSTM-CRF by default, offline).

Recall bias (why): a missed name leaks; an extra span costs a harmless surrogate. A token
is therefore PHI when the model gives it probability ``1 - P(O) >= threshold`` even if the
best path says ``O`` (the obi/"threshold_max" idea). The threshold is chosen on the dev
split at training time and stored in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch

from fedmed.deid.phi import Span
from fedmed.deid.tokens import LABELS, Token, decode


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch ops on ``n`` threads, then restore the previous setting.

    Small recurrent models are fastest on one thread, and on a shared 2-core node extra
    threads spin against other processes (measured: 0.4 s vs 8.6 s per training step).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@runtime_checkable
class Tagger(Protocol):
    """A PHI tagger: ``predict`` returns spans with scores for each text."""

    name: str
    version: str
    threshold: float

    def predict(self, texts: Sequence[str]) -> list[list[Span]]: ...


DECODER_VERSION = "recall-biased-2"
"""Version of the span decoding below (threshold rule, name completion); recorded with the
checkpoint's hash in every de-id report. 2 added :func:`complete_names`."""
NAME_TYPES = ("PATIENT", "DOCTOR")
NAME_THRESHOLD_RATIO = 0.1
"""A word next to a name joins it from ``threshold * NAME_THRESHOLD_RATIO`` (0.005 for the
shipped checkpoint), see :func:`complete_names`. Ratios 0.2, 0.1 and 0.04 all found every
patient name on the dev split and on 600 fresh test-template notes (seed 99), at a cost
of 0.0013, 0.0014 and 0.0017 dev binary precision; at 0.2 the all-caps first names this
was made for (probabilities 0.016-0.045) pass with a margin of only 1.6x, so 0.1."""


def recall_biased_spans(tokens: Sequence[Token], best: Sequence[int],
                        probs: torch.Tensor, threshold: float) -> list[Span]:
    """Spans from the best label path plus every token whose PHI probability passes,
    with names completed (:func:`complete_names`).

    ``best``: label index per token (Viterbi or argmax); ``probs``: (tokens, labels)
    marginal/softmax probabilities. Span score = mean PHI probability of its tokens.
    """
    phi_prob = (1.0 - probs[:, 0]).tolist() if len(tokens) else []
    labels: list[str] = []
    prev_type: str | None = None
    for i, idx in enumerate(best):
        label = LABELS[idx]
        if label == "O" and phi_prob[i] >= threshold:
            alt = int(torch.argmax(probs[i, 1:]).item()) + 1
            typ = LABELS[alt].split("-", 1)[1]
            label = f"{'I' if typ == prev_type else 'B'}-{typ}"
        prev_type = None if label == "O" else label.split("-", 1)[1]
        labels.append(label)
    complete_names(tokens, labels, phi_prob, probs, threshold * NAME_THRESHOLD_RATIO)
    return decode(tokens, labels, phi_prob)


def complete_names(tokens: Sequence[Token], labels: list[str], phi_prob: Sequence[float],
                   probs: torch.Tensor, name_threshold: float) -> None:
    """Hysteresis for names: a word next to a name joins it at a lower PHI probability.

    Why: the tagger often finds one word of a name and gives the other a probability
    below the threshold, most of all in all-caps text, where casing no longer tells
    names from other words ("FOR MORGAN MCBRIDE, LOCAL MRN": MCBRIDE 1.00, MORGAN 0.016).
    A word (letters only) joins a PATIENT or DOCTOR name it directly precedes or follows
    when (a) its PHI probability is ``>= name_threshold``, (b) its most likely PHI label
    is a name label too, and (c) one space or one line break separates the two (wider
    gaps are table columns: ``Knight    Sex: M``). Repeated, so a name grows word by
    word. ``labels`` (BIO) is changed in place.
    """
    def name_type(j: int) -> str | None:
        if 0 <= j < len(labels) and labels[j] != "O":
            typ = labels[j].split("-", 1)[1]
            return typ if typ in NAME_TYPES else None
        return None

    def joined(a: int, b: int) -> bool:
        return tokens[b].start - tokens[a].end == 1

    changed = True
    while changed:
        changed = False
        for i, tok in enumerate(tokens):
            if labels[i] != "O" or phi_prob[i] < name_threshold or not tok.text.isalpha():
                continue
            alt = LABELS[int(torch.argmax(probs[i, 1:]).item()) + 1].split("-", 1)[1]
            if alt not in NAME_TYPES:
                continue
            if (typ := name_type(i - 1)) is not None and joined(i - 1, i):
                labels[i] = f"I-{typ}"
            elif (typ := name_type(i + 1)) is not None and joined(i, i + 1):
                labels[i] = f"B-{typ}"
                labels[i + 1] = f"I-{typ}"
            else:
                continue
            changed = True
