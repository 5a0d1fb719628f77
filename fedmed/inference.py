"""Running a model over a whole dataset: one place for the task packs' scores, the studies'
membership attack and the retrieval index (``fedmed.explain``), which cannot import the
task packs (they import the explainers), so this sits below both."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


def predict(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 256,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model outputs and targets over a whole dataset, on the CPU, in dataset order.
    ``forward`` (default: the model itself) is what is computed on each batch, e.g. a
    retrieval model's ``embed``; the model is put in eval mode either way."""
    model.eval()
    compute = forward or model
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    with torch.no_grad():
        for inputs, target in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            outputs.append(compute(inputs.to(device)).cpu())
            targets.append(target)
    return torch.cat(outputs), torch.cat(targets)
