"""Model selection on dev, shared by the trainers of both PHI taggers.

Why select on dev (never on test): the test split holds templates no training or
selection step has seen, so its numbers estimate performance on unfamiliar note layouts.
:class:`BestEpoch` keeps the epoch with the best dev score; :func:`choose_threshold` then
picks the lowest recall-biased threshold whose dev binary precision stays at or above
:data:`PRECISION_FLOOR`. Both end up in the checkpoint (:mod:`fedmed.deid.train` for the
BiLSTM-CRF, :mod:`fedmed.deid.transformer_tagger` for MiniLM).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedmed.deid.evaluate import score
from fedmed.deid.phi import Document
from fedmed.deid.tagger import Tagger

PRECISION_FLOOR = 0.90
THRESHOLDS = (0.5, 0.35, 0.2, 0.1, 0.05, 0.02, 0.01)


@dataclass
class TrainResult:
    """What a training run produced: the checkpoint, its threshold and dev scores."""

    path: Path
    arch: str
    threshold: float
    best_epoch: int
    dev: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "arch": self.arch, "threshold": self.threshold,
                "best_epoch": self.best_epoch, "seconds": round(self.seconds, 1),
                "dev_token_binary": self.dev["token"]["binary"],
                "dev_entity_strict": self.dev["entity"]["strict"], "history": self.history}


class BestEpoch:
    """Keeps the weights of the epoch with the best dev score (model selection on dev)."""

    def __init__(self) -> None:
        self.score = float("-inf")
        self.epoch = 0
        self.state: dict[str, torch.Tensor] = {}

    def offer(self, score: float, epoch: int, model: torch.nn.Module) -> None:
        if score > self.score:
            self.score, self.epoch = score, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)


def out_of_time(started: float, max_minutes: float | None) -> bool:
    """True once ``max_minutes`` of wall time have passed since ``started`` (monotonic)."""
    if not max_minutes:
        return False
    return time.monotonic() - started > 60 * max_minutes


def dev_score(tagger: Tagger, dev: Sequence[Document]) -> dict[str, Any]:
    return score(dev, tagger.predict([d.text for d in dev]))


def choose_threshold(tagger: Tagger, dev: Sequence[Document]) -> tuple[float, dict[str, Any]]:
    """The lowest threshold keeping dev binary precision >= the floor, and its scores."""
    chosen, chosen_score = THRESHOLDS[0], None
    for t in THRESHOLDS:
        tagger.threshold = t
        s = dev_score(tagger, dev)
        if chosen_score is None or s["token"]["binary"]["precision"] >= PRECISION_FLOOR:
            chosen, chosen_score = t, s
        else:
            break
    tagger.threshold = chosen
    assert chosen_score is not None
    return chosen, chosen_score


