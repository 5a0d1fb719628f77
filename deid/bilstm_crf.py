"""BiLSTM-CRF PHI tagger (Lample et al. 2016; Dernoncourt et al. 2017 for de-id).

Why this architecture as the default: it is small (ships in the repo, < 5 MB), fast on
two CPU cores, and its character CNN plus casing/length/whitespace features recognise
PHI by *shape* ("4455123", "Smith", "MRN:") as well as by context, which is what carries
over to note templates it never saw. The CRF (``pytorch-crf``) keeps label sequences
consistent (no ``I-DATE`` inside a name).

Inputs per token: lower-cased word with digits mapped to ``0`` (vocabulary from the
training split), its characters, a casing class, a length bucket and the whitespace before
it. Long notes are cut into overlapping windows (:func:`fedmed.deid.tokens.windows`).
Token probabilities are CRF marginals, obtained as the gradient of the log-partition
function with respect to the emissions; they drive the recall-biased threshold.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchcrf import CRF

from fedmed.deid.phi import Span
from fedmed.deid.tagger import recall_biased_spans, torch_threads
from fedmed.deid.tokens import LABELS, Token, owner_window, tokenize, windows
from fedmed.errors import DataError

PAD, UNK = 0, 1
MAX_CHARS = 20
_DIGIT = re.compile(r"\d")


def norm_word(text: str) -> str:
    return _DIGIT.sub("0", text.lower())


@lru_cache(maxsize=65536)
def casing(text: str) -> int:
    """1 digit, 2 all-caps, 3 single capital, 4 lower, 5 title, 6 mixed, 7 symbol."""
    if text.isdigit():
        return 1
    if text.isalpha():
        if text.isupper():
            return 3 if len(text) == 1 else 2
        if text.islower():
            return 4
        if text[0].isupper() and text[1:].islower():
            return 5
        return 6
    return 7


GAPS = {"": 1, " ": 2, "\n": 3}


@dataclass
class Vocab:
    """Word and character vocabularies (index 0 = padding, 1 = unknown)."""

    words: list[str]
    chars: list[str]

    def __post_init__(self) -> None:
        self._w = {w: i for i, w in enumerate(self.words)}
        self._c = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def build(cls, texts: Iterable[str], max_words: int = 8000, min_count: int = 2) -> Vocab:
        wc: Counter[str] = Counter()
        cc: Counter[str] = Counter()
        for text in texts:
            for tok in tokenize(text):
                wc[norm_word(tok.text)] += 1
                cc.update(tok.text)
        words = [w for w, n in wc.most_common(max_words) if n >= min_count]
        chars = [c for c, _ in cc.most_common(400)]
        return cls(["<pad>", "<unk>", *words], ["<pad>", "<unk>", *chars])

    def word_id(self, text: str) -> int:
        return self._w.get(norm_word(text), UNK)

    def char_ids(self, text: str) -> list[int]:
        if len(text) > MAX_CHARS:  # keep both ends: prefixes and suffixes carry the shape
            text = text[: MAX_CHARS // 2] + text[-MAX_CHARS // 2:]
        return [self._c.get(c, UNK) for c in text]

    def to_json(self) -> dict[str, list[str]]:
        return {"words": self.words, "chars": self.chars}


@dataclass
class ModelConfig:
    """Layer sizes of :class:`BiLstmCrf` (stored in the checkpoint)."""

    n_words: int
    n_chars: int
    word_dim: int = 64
    char_dim: int = 24
    char_filters: int = 48
    hidden: int = 128
    dropout: float = 0.3
    n_tags: int = field(default=len(LABELS))


class FastCRF(CRF):
    """pytorch-crf's CRF (same parameters, same results) with faster CPU paths.

    - training: vectorised path score and an ``unbind``-based forward pass (pytorch-crf
      indexes ``emissions[i]`` per step; the backward of those slices allocated a full zero
      tensor each time, a third of the training time);
    - :meth:`viterbi`: backtracking for the whole batch at once instead of per sequence;
    - :meth:`marginals`: scaled forward-backward in probability space (float64), instead
      of differentiating the log-partition function.
    """

    def _compute_score(self, emissions: torch.Tensor, tags: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        maskf = mask.to(emissions.dtype)
        em = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)
        score = self.start_transitions[tags[0]] + (em * maskf).sum(0)
        score = score + (self.transitions[tags[:-1], tags[1:]] * maskf[1:]).sum(0)
        last = tags.gather(0, (mask.long().sum(0) - 1).unsqueeze(0)).squeeze(0)
        return score + self.end_transitions[last]

    def _compute_normalizer(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps, masks = emissions.unbind(0), mask.unbind(0)
        score = self.start_transitions + steps[0]
        for em, m in zip(steps[1:], masks[1:], strict=True):
            nxt = torch.logsumexp(score.unsqueeze(2) + self.transitions + em.unsqueeze(1), dim=1)
            score = torch.where(m.unsqueeze(1), nxt, score)
        return torch.logsumexp(score + self.end_transitions, dim=1)

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Best tag path per sequence; ``emissions`` (B, T, K), ``mask`` (B, T)."""
        em, m = emissions.transpose(0, 1), mask.transpose(0, 1)
        steps, batch = m.shape
        score = self.start_transitions + em[0]
        history = []
        for t in range(1, steps):
            best, idx = (score.unsqueeze(2) + self.transitions).max(dim=1)
            score = torch.where(m[t].unsqueeze(1), best + em[t], score)
            history.append(idx)
        lengths = m.sum(0)
        cur = (score + self.end_transitions).argmax(1)
        paths = torch.zeros(steps, batch, dtype=torch.long, device=em.device)
        for t in range(steps - 1, -1, -1):
            paths[t] = cur
            if t > 0:
                prev = history[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
                cur = torch.where(t <= lengths - 1, prev, cur)
        return [paths[: int(n), b].tolist() for b, n in enumerate(lengths)]

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """P(tag at position | sequence), (B, T, K); rows past a sequence's end are junk."""
        em = emissions.transpose(0, 1).double()
        m = mask.transpose(0, 1)
        steps = em.shape[0]
        trans = torch.exp(self.transitions.double() - self.transitions.max())
        ee = torch.exp(em - em.max(dim=2, keepdim=True).values)
        start = torch.exp(self.start_transitions.double() - self.start_transitions.max())
        end = torch.exp(self.end_transitions.double() - self.end_transitions.max())
        alphas = [_normalise(start * ee[0])]
        for t in range(1, steps):
            nxt = _normalise((alphas[-1] @ trans) * ee[t])
            alphas.append(torch.where(m[t].unsqueeze(1), nxt, alphas[-1]))
        last = (m.sum(0) - 1).unsqueeze(1)
        betas = [end.expand_as(ee[0])] * steps
        for t in range(steps - 2, -1, -1):
            prop = _normalise((ee[t + 1] * betas[t + 1]) @ trans.T)
            betas[t] = torch.where(last == t, end.expand_as(prop), prop)
        marg = torch.stack([_normalise(a * b) for a, b in zip(alphas, betas, strict=True)])
        return marg.transpose(0, 1).to(emissions.dtype)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.sum(dim=-1, keepdim=True).clamp_min(1e-300)


class BiLstmCrf(nn.Module):
    """Word + char-CNN + shape features -> BiLSTM -> linear emissions -> CRF.

    The two LSTM directions are separate modules so that padded batches need no packing.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.n_words, cfg.word_dim, padding_idx=PAD)
        self.char = nn.Embedding(cfg.n_chars, cfg.char_dim, padding_idx=PAD)
        self.char_cnn = nn.Conv1d(cfg.char_dim, cfg.char_filters, kernel_size=3, padding=1)
        self.case = nn.Embedding(8, 8)
        self.length = nn.Embedding(10, 4)
        self.gap = nn.Embedding(4, 4)
        in_dim = cfg.word_dim + cfg.char_filters + 16
        self.fwd = nn.LSTM(in_dim, cfg.hidden, batch_first=True)
        self.bwd = nn.LSTM(in_dim, cfg.hidden, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(2 * cfg.hidden, cfg.n_tags)
        self.crf = FastCRF(cfg.n_tags, batch_first=True)

    def emissions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        words, chars, feats, mask = batch["words"], batch["chars"], batch["feats"], batch["mask"]
        b, t, c = chars.shape
        ch = self.char(chars.view(b * t, c)).transpose(1, 2)          # (B*T, D, C)
        ch = torch.relu(self.char_cnn(ch)).max(dim=2).values.view(b, t, -1)
        x = torch.cat([self.word(words), ch, self.case(feats[..., 0]),
                       self.length(feats[..., 1]), self.gap(feats[..., 2])], dim=-1)
        x = self.drop(x)
        # Backward direction on each sequence reversed within its own length, so padding
        # never feeds the real tokens (cheaper on CPU than packed sequences).
        rev = reverse_index(mask).unsqueeze(-1)
        fwd, _ = self.fwd(x)
        bwd, _ = self.bwd(x.gather(1, rev.expand_as(x)))
        bwd = bwd.gather(1, rev.expand_as(bwd))
        return self.out(self.drop(torch.cat([fwd, bwd], dim=-1)))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        em = self.emissions(batch)
        return -self.crf(em, batch["tags"], mask=batch["mask"], reduction="mean")

    def decode(self, batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], torch.Tensor]:
        """Viterbi paths and per-token marginals (B, T, tags)."""
        with torch.no_grad():
            em = self.emissions(batch)
        return self.crf.viterbi(em, batch["mask"]), self.crf.marginals(em, batch["mask"])


def reverse_index(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) indices reversing each row within its length (padding stays in place)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device).expand_as(mask)
    lengths = mask.sum(1, keepdim=True)
    return torch.where(pos < lengths, lengths - 1 - pos, pos)


def encode_tokens(vocab: Vocab, tokens: Sequence[Token]) -> dict[str, list[Any]]:
    """Model inputs for one token sequence (lists, padded later by :func:`collate`)."""
    return {
        "words": [vocab.word_id(t.text) for t in tokens],
        "chars": [vocab.char_ids(t.text) for t in tokens],
        "feats": [[casing(t.text), min(len(t.text), 9), GAPS[t.gap]] for t in tokens],
    }


def collate(items: Sequence[dict[str, list[Any]]], device: str = "cpu") -> dict[str, torch.Tensor]:
    """Pad encoded sequences into batch tensors (``tags`` included when present)."""
    t = max(len(it["words"]) for it in items)
    c = max((len(ch) for it in items for ch in it["chars"]), default=1)

    def pad(seq: list[Any], fill: Any) -> list[Any]:
        return seq + [fill] * (t - len(seq))

    out = {
        "words": torch.tensor([pad(it["words"], PAD) for it in items], dtype=torch.long),
        "chars": torch.tensor([pad([ch + [PAD] * (c - len(ch)) for ch in it["chars"]],
                                   [PAD] * c) for it in items], dtype=torch.long),
        "feats": torch.tensor([pad(it["feats"], [0, 0, 0]) for it in items], dtype=torch.long),
        "mask": torch.tensor([pad([True] * len(it["words"]), False) for it in items]),
        "tags": torch.tensor([pad(it.get("tags", []), 0) if "tags" in it else [0] * t
                              for it in items], dtype=torch.long),
    }
    return {k: v.to(device) for k, v in out.items()}


class BiLstmCrfTagger:
    """The BiLSTM-CRF behind the :class:`fedmed.deid.tagger.Tagger` interface."""

    name = "bilstm-crf"

    def __init__(self, model: BiLstmCrf, vocab: Vocab, threshold: float = 0.5,
                 window: int = 256, overlap: int = 64, version: str = "untrained",
                 device: str = "cpu", metrics: dict[str, Any] | None = None) -> None:
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.threshold = threshold
        self.window, self.overlap = window, overlap
        self.version = version
        self.device = device
        self.metrics = metrics or {}

    # ------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Weights (fp16) + config in ``path``; vocabulary in ``<stem>.vocab.json``."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        state = {k: (v.half() if v.is_floating_point() else v)
                 for k, v in self.model.state_dict().items()}
        torch.save({"state_dict": state, "config": asdict(self.model.cfg),
                    "threshold": self.threshold, "window": self.window,
                    "overlap": self.overlap, "labels": list(LABELS),
                    "metrics": self.metrics}, p)
        vocab_path(p).write_text(json.dumps(self.vocab.to_json()))
        self.version = file_version(p)
        return p

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> BiLstmCrfTagger:
        p = Path(path)
        if not p.is_file() or not vocab_path(p).is_file():
            raise DataError(f"{p}: BiLSTM-CRF checkpoint or its {vocab_path(p).name} missing")
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
        if ckpt.get("labels") != list(LABELS):
            raise DataError(f"{p}: checkpoint label set differs from this version's labels")
        vocab = Vocab(**json.loads(vocab_path(p).read_text()))
        model = BiLstmCrf(ModelConfig(**ckpt["config"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in ckpt["state_dict"].items()})
        return cls(model, vocab, ckpt["threshold"], ckpt["window"], ckpt["overlap"],
                   file_version(p), device, ckpt.get("metrics"))

    # ------------------------------------------------------------ inference
    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[list[Span]]:
        with torch_threads(1):
            return self._predict(texts, batch_size)

    def _predict(self, texts: Sequence[str], batch_size: int) -> list[list[Span]]:
        all_tokens = [tokenize(t) for t in texts]
        jobs = [(d, w, a, b) for d, toks in enumerate(all_tokens) if toks
                for w, (a, b) in enumerate(windows(len(toks), self.window, self.overlap))]
        jobs.sort(key=lambda j: j[3] - j[2])
        results: dict[tuple[int, int], tuple[list[int], torch.Tensor]] = {}
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i:i + batch_size]
            batch = collate([encode_tokens(self.vocab, all_tokens[d][a:b])
                             for d, _, a, b in chunk], self.device)
            paths, marg = self.model.decode(batch)
            for (d, w, a, b), path, m in zip(chunk, paths, marg, strict=True):
                results[(d, w)] = (path, m[: b - a].cpu())
        out = []
        for d, toks in enumerate(all_tokens):
            out.append(self._merge(toks, results, d))
        return out

    def _merge(self, toks: list[Token],
               results: dict[tuple[int, int], tuple[list[int], torch.Tensor]],
               d: int) -> list[Span]:
        if not toks:
            return []
        wins = windows(len(toks), self.window, self.overlap)
        owner = owner_window(len(toks), wins)
        best: list[int] = []
        parts = []
        i = 0
        while i < len(toks):  # contiguous runs owned by one window
            w, j = owner[i], i
            while j < len(toks) and owner[j] == w:
                j += 1
            path, marg = results[(d, w)]
            a = wins[w][0]
            best.extend(path[i - a:j - a])
            parts.append(marg[i - a:j - a])
            i = j
        return recall_biased_spans(toks, best, torch.cat(parts), self.threshold)


def vocab_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".vocab.json")


def file_version(path: Path) -> str:
    """``<file name>@<first 12 hex of sha256>``: what the de-id report records."""
    digest = hashlib.sha256(path.read_bytes())
    for extra in (vocab_path(path),):
        if extra.is_file():
            digest.update(extra.read_bytes())
    return f"{path.name}@{digest.hexdigest()[:12]}"
