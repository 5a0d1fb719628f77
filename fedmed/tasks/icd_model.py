"""The ``icd`` pack's model and metrics: a CAML-style per-code attention CNN.

Model (:class:`CamlNet`): CAML (Mullenbach et al., NAACL 2018) — embedding, one convolution
over the words, then *per-code attention*: each code weighs the positions of the note on its
own and scores the weighted sum. Written with two ``nn.Linear`` layers over every position
(attention scores and per-position code scores, whose attention-weighted sum equals CAML's
``w_l · Σ α_lt h_t + b_l``), so Opacus computes per-example gradients with its standard
layers — no custom layer, no BatchNorm. The attention weights are the explanation:
:meth:`CamlNet.evidence` returns, per predicted code, the spans of released text the code
attended to most (each span is the convolution's receptive field around the position), through
:func:`fedmed.explain.text_evidence.evidence_from_attention`.

Metrics (:func:`coding_scores`): ``micro_f1`` (primary; every note-code decision counts once,
so frequent codes dominate), ``macro_f1`` (the mean over codes that occur in the evaluated
notes: the long tail counts as much as the head) and ``precision_at_5`` (CAML's P@k: correct
codes among the five highest-scoring, divided by 5 — with ~3 codes per note its ceiling is
about 0.6). Decisions at probability 0.5. This module registers no task.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn

from fedmed.data.icd_synth import CODE_IDS
from fedmed.explain.text_evidence import THRESHOLD, CodeEvidence, evidence_from_attention
from fedmed.tasks.icd_encoding import MAX_TOKENS, VOCAB_SIZE, encode, tokenize

EMBED_DIM = 64
CHANNELS = 64
KERNEL = 7  # the receptive field: "no evidence of <code>" and "<code> ruled out" fit in it
TOP_K = 5


def code_attention(hidden: torch.Tensor, padding: torch.Tensor, attention: nn.Linear,
                   output: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """CAML's per-code attention over positions, shared by every ICD model here.

    ``hidden``: batch × positions × features; ``padding``: batch × positions, True where
    there is no input. Returns the logits (batch × codes) and the attention weights
    (batch × positions × codes); a padded position gets weight 0.
    """
    scores = attention(hidden).masked_fill(padding.unsqueeze(-1), -1e4)
    weights = torch.softmax(scores, dim=1)
    return (weights * output(hidden)).sum(dim=1), weights


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
        return code_attention(hidden, ids == 0, self.attention, self.output)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.attend(ids)[0]

    def evidence(self, text: str, top_k: int = 3) -> list[CodeEvidence]:
        """:func:`evidence_from_attention` of ``text``; a span covers the convolution's receptive
        field around an attended word (what the model saw there)."""
        tokens = tokenize(text, MAX_TOKENS)
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
