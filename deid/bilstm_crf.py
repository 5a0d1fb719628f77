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

import numpy as np
import torch
from torch import nn
from torchcrf import CRF

from fedmed.deid.phi import Span
from fedmed.deid.tagger import recall_biased_spans, torch_threads
from fedmed.deid.tokens import LABELS, Token, owner_window, tokenize, windows
from fedmed.errors import DataError

PAD, UNK = 0, 1
MAX_CHARS = 20
CHAR_WIDTH = MAX_CHARS + 2
"""Inference pads every token's characters to this width, so that a token's features do
not depend on its batch: the char CNN (kernel 3) sees padding-only positions (value
``relu(bias)``) for a token of length L exactly when the row is at least L + 2 wide. Padding
to the longest token of the batch, as training does, gave the longest tokens different
vectors in different batches (a note's spans changed with the notes batched with it)."""
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
        """Best tag path per sequence; ``emissions`` (B, T, K), ``mask`` (B, T) prefix masks.

        The same paths as pytorch-crf's ``decode`` (ties: first best previous tag), cheaper:

        - the forward pass keeps only the best *scores* per step (``amax``); pytorch-crf's
          ``max`` with indices over the (B, K, K) step tensor cost about twice as much, and
          the indices of all K x K pairs are never needed;
        - it skips previous tags that cannot be best: with ``M`` the best score of a row
          and ``i*`` its tag, every tag ``j`` scores at least ``M + min_j T[i*, j]``, and a
          previous tag ``i`` reaches at most ``s_i + max T``; tags below that bound for every
          row of the batch are left out (1.0 of slack against rounding). The shipped
          checkpoint's transitions span less than 3.5, so ~11 of 61 tags remain per step;
        - the back-pointers are recomputed during backtracking for the one tag each
          sequence is in (B x K work per step instead of B x K x K), in NumPy, whose small
          array operations cost a microsecond where a torch call costs several.

        The recursion over time stays a loop (step t needs step t-1); it is vectorised over
        the batch and the tags. A parallel prefix scan over time would multiply the work
        by K (max-plus products of K x K matrices), which a CPU does not win back.
        """
        em = emissions.detach().transpose(0, 1)
        m = mask.transpose(0, 1).unsqueeze(2)
        steps, batch, k = em.shape
        trans = self.transitions.detach()
        slack = trans.min(dim=1).values - trans.max() - 1.0
        scores = torch.empty(steps, batch, k, dtype=em.dtype, device=em.device)
        scores[0] = self.start_transitions.detach() + em[0]
        for t in range(1, steps):
            prev = scores[t - 1]
            top, arg = prev.max(dim=1)
            keep = (prev >= (top + slack[arg]).unsqueeze(1)).any(dim=0).nonzero().squeeze(1)
            best = (prev[:, keep].unsqueeze(2) + trans[keep]).amax(dim=1)  # [b, cur]
            torch.where(m[t], best.add_(em[t]), prev, out=scores[t])
        lengths = mask.sum(1).cpu().numpy()
        s = scores.cpu().numpy()
        rows = np.arange(batch)
        cur = (s[lengths - 1, rows] + self.end_transitions.detach().cpu().numpy()).argmax(1)
        trans_by_cur = trans.t().contiguous().cpu().numpy()  # [cur, prev]
        paths = np.empty((steps, batch), dtype=np.int64)
        for t in range(steps - 1, 0, -1):
            paths[t] = cur
            back = (s[t - 1] + trans_by_cur[cur]).argmax(1)
            cur = np.where(t <= lengths - 1, back, cur)
        paths[0] = cur
        return [paths[: int(n), b].tolist() for b, n in enumerate(lengths)]

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """P(tag at position | sequence), (B, T, K); rows past a sequence's end are junk.

        Scaled forward-backward in probability space (float64): each step is a (B, K) x
        (K, K) matrix product, which BLAS does in microseconds, instead of a log-sum-exp
        over a (B, K, K) tensor.
        """
        em = emissions.detach().transpose(0, 1).double()
        m = mask.transpose(0, 1).unsqueeze(2)
        steps = em.shape[0]
        transitions = self.transitions.detach().double()
        trans = torch.exp(transitions - transitions.max())
        trans_t = trans.t()
        ee = torch.exp(em - em.max(dim=2, keepdim=True).values)
        start = self.start_transitions.detach().double()
        end = self.end_transitions.detach().double()
        start = torch.exp(start - start.max())
        end = torch.exp(end - end.max())
        alphas = torch.empty_like(ee)
        alphas[0] = _normalise(start * ee[0])
        for t in range(1, steps):
            nxt = _normalise((alphas[t - 1] @ trans) * ee[t])
            torch.where(m[t], nxt, alphas[t - 1], out=alphas[t])
        last = (mask.sum(1) - 1).unsqueeze(1)
        betas = torch.empty_like(ee)
        betas[steps - 1] = end
        for t in range(steps - 2, -1, -1):
            prop = _normalise((ee[t + 1] * betas[t + 1]) @ trans_t)
            torch.where(last == t, end, prop, out=betas[t])
        marg = _normalise(alphas * betas)
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

    def token_vectors(self, words: torch.Tensor, chars: torch.Tensor,
                      shape: torch.Tensor) -> torch.Tensor:
        """Word, char-CNN, casing and length features of tokens, any leading shape.

        ``words`` (...), ``chars`` (..., C), ``shape`` (..., 2) = casing class, length
        bucket. None of them depends on the neighbours, so inference computes them once per
        distinct token text of a batch (:meth:`emissions` takes them by index).
        """
        lead, c = chars.shape[:-1], chars.shape[-1]
        ch = self.char(chars.reshape(-1, c)).transpose(1, 2)          # (N, D, C)
        ch = torch.relu(self.char_cnn(ch)).max(dim=2).values.view(*lead, -1)
        return torch.cat([self.word(words), ch, self.case(shape[..., 0]),
                          self.length(shape[..., 1])], dim=-1)

    def emissions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Emission scores (B, T, tags) of a batch from :func:`collate` (one feature row per
        position) or from :meth:`BiLstmCrfTagger.encode_batch` (distinct tokens + index)."""
        mask = batch["mask"]
        if "index" in batch:
            tokens = self.token_vectors(batch["words"], batch["chars"], batch["shape"])
            x, gaps = tokens[batch["index"]], batch["gaps"]
        else:
            feats = batch["feats"]
            x, gaps = self.token_vectors(batch["words"], batch["chars"], feats[..., :2]), \
                feats[..., 2]
        x = self.drop(torch.cat([x, self.gap(gaps)], dim=-1))
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
        with torch.inference_mode():
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
    FEATURE_CACHE = 200_000
    """Distinct token texts whose features are kept (~200 B each; beyond it: computed)."""

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
        self._features: dict[str, tuple[list[int], np.ndarray]] = {}

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
            batch = self.encode_batch([all_tokens[d][a:b] for d, _, a, b in chunk])
            paths, marg = self.model.decode(batch)
            for (d, w, a, b), path, m in zip(chunk, paths, marg, strict=True):
                results[(d, w)] = (path, m[: b - a].cpu())
        out = []
        for d, toks in enumerate(all_tokens):
            out.append(self._merge(toks, results, d))
        return out

    def encode_batch(self, seqs: Sequence[Sequence[Token]]) -> dict[str, torch.Tensor]:
        """Inference inputs: the features of each *distinct* token text once, plus an index.

        The inputs of :func:`collate` of :func:`encode_tokens` (except that character rows
        are :data:`CHAR_WIDTH` wide), but a 2,000-character note repeats most of its tokens
        and every note repeats "the", ":" and "MRN": the per-token Python work and the
        character CNN run once per distinct text of the batch, and a text's features are
        cached across batches (:attr:`FEATURE_CACHE` entries at most).
        """
        distinct: dict[str, int] = {}
        index = np.zeros((len(seqs), max(len(s) for s in seqs)), dtype=np.int64)
        gaps = np.zeros_like(index)
        mask = np.zeros(index.shape, dtype=bool)
        for row, seq in enumerate(seqs):
            index[row, :len(seq)] = [distinct.setdefault(t.text, len(distinct)) for t in seq]
            gaps[row, :len(seq)] = [GAPS[t.gap] for t in seq]
            mask[row, :len(seq)] = True
        feats = [self._token_features(text) for text in distinct]
        ids = torch.tensor([f[0] for f in feats], dtype=torch.long)   # word, casing, length
        chars = torch.from_numpy(np.stack([f[1] for f in feats]))
        out = {"words": ids[:, 0], "shape": ids[:, 1:], "chars": chars,
               "index": torch.from_numpy(index), "gaps": torch.from_numpy(gaps),
               "mask": torch.from_numpy(mask)}
        return {k: v.to(self.device) for k, v in out.items()}

    def _token_features(self, text: str) -> tuple[list[int], np.ndarray]:
        """([word id, casing, length bucket], char ids padded to CHAR_WIDTH) of a token."""
        hit = self._features.get(text)
        if hit is None:
            chars = self.vocab.char_ids(text)
            row = np.zeros(CHAR_WIDTH, dtype=np.int64)
            row[:len(chars)] = chars
            hit = ([self.vocab.word_id(text), casing(text), min(len(text), 9)], row)
            if len(self._features) < self.FEATURE_CACHE:
                self._features[text] = hit
        return hit

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
