"""Training for the PHI taggers: fit on a train split, select on dev, save a checkpoint.

Why select on dev (never on test): the test split holds templates no training or
selection step has seen, so its numbers estimate performance on unfamiliar note layouts.
Model selection keeps the epoch with the best dev binary-token F2 (recall weighted), then
the recall-biased threshold is the lowest candidate whose dev binary precision stays at or
above :data:`PRECISION_FLOOR`; both are stored in the checkpoint.

Retraining on local annotations: put i2b2-2014 XML files in ``DIR/train`` and ``DIR/dev``
(e.g. a site's own annotated notes, or these plus synthetic ones) and run
``fedmed deid train --corpus DIR --out OUT``; point the gate at ``OUT/bilstm_crf.pt``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fedmed.deid.bilstm_crf import (
    BiLstmCrf,
    BiLstmCrfTagger,
    ModelConfig,
    Vocab,
    collate,
    encode_tokens,
)
from fedmed.deid.io import read_i2b2_dir
from fedmed.deid.phi import Document
from fedmed.deid.selection import (
    PRECISION_FLOOR,
    THRESHOLDS,
    BestEpoch,
    TrainResult,
    choose_threshold,
    dev_score,
    out_of_time,
)
from fedmed.deid.tagger import torch_threads
from fedmed.deid.tokens import LABEL_INDEX, bio_labels, tokenize, windows
from fedmed.deid.transformer_tagger import train_transformer
from fedmed.errors import ConfigError, DataError

ARCHS = ("bilstm-crf", "transformer")


def load_splits(corpus: str | Path) -> tuple[list[Document], list[Document]]:
    """``corpus/train`` and ``corpus/dev`` (dev = last 10% of train when absent)."""
    root = Path(corpus)
    train_docs = read_i2b2_dir(root / "train")
    if (root / "dev").is_dir():
        return train_docs, read_i2b2_dir(root / "dev")
    if len(train_docs) < 2:
        raise DataError(f"{root}: need a dev/ folder or at least 2 training notes")
    cut = max(1, len(train_docs) // 10)
    return train_docs[:-cut], train_docs[-cut:]


def windowed_examples(
    docs: Sequence[Document], vocab: Vocab, size: int, overlap: int
) -> list[dict[str, Any]]:
    """Encoded overlapping windows of every note with their BIO tags (also deid-ner's data)."""
    out = []
    for doc in docs:
        toks = tokenize(doc.text)
        tags = [LABEL_INDEX[label] for label in bio_labels(toks, doc.spans)]
        for a, b in windows(len(toks), size, overlap):
            ex = encode_tokens(vocab, toks[a:b])
            ex["tags"] = tags[a:b]
            out.append(ex)
    return out


def word_dropout(batch: dict[str, torch.Tensor], p: float) -> None:
    """Replace words by <unk> at random so the model also learns from shape and context."""
    drop = (torch.rand_like(batch["words"], dtype=torch.float) < p) & batch["mask"]
    batch["words"] = batch["words"].masked_fill(drop, 1)


def fit_epoch(model: BiLstmCrf, opt: torch.optim.Optimizer, examples: list[dict[str, Any]],
              batch_size: int, rng: random.Random) -> float:
    """One shuffled pass over ``examples`` (word dropout, clipped gradients); mean loss.
    Leaves the model in eval mode, ready to be scored."""
    model.train()
    rng.shuffle(examples)
    total = 0.0
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size])
        word_dropout(batch, 0.25)
        loss = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        total += loss.item() * len(batch["words"])
    model.eval()
    return total / max(len(examples), 1)


def train_bilstm_crf(train_docs: Sequence[Document], dev_docs: Sequence[Document],
                     out: str | Path, epochs: int = 8, seed: int = 0, batch_size: int = 32,
                     lr: float = 3e-3, max_minutes: float | None = None,
                     log: Callable[[str], None] = print) -> TrainResult:
    """Train the BiLSTM-CRF and write ``out/bilstm_crf.pt`` (+ vocab json)."""
    with torch_threads(1):
        return _train_bilstm_crf(train_docs, dev_docs, out, epochs, seed, batch_size, lr,
                                 max_minutes, log)


def _train_bilstm_crf(train_docs: Sequence[Document], dev_docs: Sequence[Document],
                      out: str | Path, epochs: int, seed: int, batch_size: int, lr: float,
                      max_minutes: float | None, log: Callable[[str], None]) -> TrainResult:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.monotonic()
    vocab = Vocab.build(d.text for d in train_docs)
    model = BiLstmCrf(ModelConfig(n_words=len(vocab.words), n_chars=len(vocab.chars)))
    tagger = BiLstmCrfTagger(model, vocab, threshold=THRESHOLDS[0])
    examples = windowed_examples(train_docs, vocab, size=128, overlap=32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = BestEpoch()
    history = []
    for epoch in range(1, epochs + 1):
        loss = fit_epoch(model, opt, examples, batch_size, rng)
        dev = dev_score(tagger, dev_docs)
        f2 = dev["token"]["binary"]["f2"]
        history.append({"epoch": epoch, "loss": loss, "dev_f2": f2,
                        "dev_recall": dev["token"]["binary"]["recall"]})
        log(f"epoch {epoch}: loss {loss:.3f} dev binary F2 {f2:.4f} "
            f"R {dev['token']['binary']['recall']:.4f} P {dev['token']['binary']['precision']:.4f}")
        best.offer(f2, epoch, model)
        if out_of_time(started, max_minutes):
            log(f"stopping after epoch {epoch}: time budget of {max_minutes} min reached")
            break
    best.restore(model)
    threshold, dev = choose_threshold(tagger, dev_docs)
    tagger.metrics = {"dev_token_binary": dev["token"]["binary"], "best_epoch": best.epoch,
                      "threshold_rule": f"lowest of {THRESHOLDS} with dev binary precision"
                                        f" >= {PRECISION_FLOOR}"}
    path = tagger.save(Path(out) / "bilstm_crf.pt")
    log(f"saved {path} (threshold {threshold}, epoch {best.epoch})")
    return TrainResult(path, "bilstm-crf", threshold, best.epoch, dev, history,
                       time.monotonic() - started)


def train(corpus: str | Path | tuple[Sequence[Document], Sequence[Document]],
          out: str | Path, arch: str = "bilstm-crf", epochs: int | None = None,
          seed: int = 0, max_minutes: float | None = None, max_steps: int | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Train ``arch`` on a corpus folder (``train/``, ``dev/``) or ``(train, dev)`` lists."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown tagger architecture {arch!r}; expected one of {ARCHS}")
    train_docs, dev_docs = load_splits(corpus) if isinstance(corpus, str | Path) else corpus
    if not train_docs or not dev_docs:
        raise DataError("training needs at least one train and one dev note")
    if arch == "bilstm-crf":
        return train_bilstm_crf(train_docs, dev_docs, out, epochs=epochs or 8, seed=seed,
                                max_minutes=max_minutes, log=log)
    return train_transformer(train_docs, dev_docs, out, epochs=epochs or 2, seed=seed,
                             max_steps=max_steps, max_minutes=max_minutes, log=log)
