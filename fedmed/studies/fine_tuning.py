"""Local fine-tuning: after the federation a site trains the final model a few more epochs
on its own training split (the other answer to domain shift beside the site-kept
normalisation layers of :mod:`fedmed.training.local_norms`).

The fine-tuned model never leaves the site (like a local-only model it is not a release, so
it spends no ε); ``fedmed generalization`` scores it (docs/results.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from fedmed.tasks import SiteData, TaskPack
from fedmed.training.loop import TrainSettings, set_weights, train_round


def fine_tune(
    pack: TaskPack,
    weights: Sequence[np.ndarray],
    data: SiteData,
    epochs: int,
    settings: TrainSettings,
    device: torch.device,
) -> nn.Module:
    """The federated model trained ``epochs`` more epochs on the site's own training split."""
    model = pack.build_model()
    set_weights(model, weights)
    train_round(pack, model, data.train, replace(settings, local_epochs=epochs), device)
    return model
