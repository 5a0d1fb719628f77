"""What every PHI tagger offers, and the recall-biased decoding they share.

A tagger turns note texts into PHI spans. Two implementations exist (BiLSTM-CRF in
:mod:`fedmed.deid.bilstm_crf`, MiniLM in :mod:`fedmed.deid.transformer_tagger`); the
Presidio engine, the evaluation and the CLI only see this interface, and
:func:`load_tagger` finds one by name or checkpoint path (the shipped BiLSTM-CRF by
default, offline).

Recall bias (why): a missed name leaks; an extra span costs a harmless surrogate. A token
is therefore PHI when the model gives it probability ``1 - P(O) >= threshold`` even if the
best path says ``O`` (the obi/"threshold_max" idea). The threshold is chosen on the dev
split at training time and stored in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from fedmed.deid import MODELS_DIR
from fedmed.deid.phi import Span
from fedmed.deid.tokens import LABELS, Token, decode
from fedmed.errors import ConfigError

DEFAULT_CHECKPOINT = MODELS_DIR / "bilstm_crf.pt"


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


def recall_biased_spans(tokens: Sequence[Token], best: Sequence[int],
                        probs: torch.Tensor, threshold: float) -> list[Span]:
    """Spans from the best label path plus every token whose PHI probability passes.

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
    return decode(tokens, labels, phi_prob)


def load_tagger(spec: str | Path | None = None, device: str = "cpu") -> Tagger:
    """A tagger from a name or path: None/"bilstm-crf" = the shipped checkpoint;
    a ``.pt`` file = a BiLSTM-CRF checkpoint; a folder with ``transformer.json`` = a
    fine-tuned transformer. Nothing is downloaded.
    """
    from fedmed.deid.bilstm_crf import BiLstmCrfTagger
    from fedmed.deid.transformer_tagger import TransformerTagger

    if spec is None or str(spec) == "bilstm-crf":
        path = DEFAULT_CHECKPOINT
    else:
        path = Path(spec)
    if path.is_dir():
        if (path / "transformer.json").is_file():
            return TransformerTagger.load(path, device=device)
        if (path / "bilstm_crf.pt").is_file():
            path = path / "bilstm_crf.pt"
    if path.is_file() and path.suffix == ".pt":
        return BiLstmCrfTagger.load(path, device=device)
    raise ConfigError(f"tagger {spec!r}: no BiLSTM-CRF checkpoint (.pt) or transformer folder "
                      f"(with transformer.json) at {path}")
