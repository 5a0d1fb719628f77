"""Canaries for the one-run privacy audit: training rows a model can only learn by heart.

An audit's lower bound is only as strong as its canaries (Steinke, Nasr & Jagielski,
NeurIPS 2023): a canary that looks like ordinary data with an ordinary label is predicted
well whether or not it was trained on, so its score says nothing. Two kinds, for any task
pack with one label per example, chosen by the size of its input:

- **Tables** (at most :data:`QUIET_MAX_INPUTS` values): inputs where the data is not —
  orthonormal directions along which the federation's real training inputs barely vary
  (the least-variance eigenvectors of their second-moment matrix, or, with fewer examples
  than values, directions orthogonal to every one), scaled to :data:`INPUT_SCALE` times the
  typical input norm — each labelled with the label the initial model finds least likely.
  A small model cannot learn an ordinary row by heart: on the heart pack's logistic
  regression (26 inputs) canaries along directions the data uses were drowned by how the
  data moved the weights (no bound at all without DP, measured while building this). Off
  the data's directions only the canary itself moves the model's output on it, and
  orthonormal canaries do not move one another's. The initial model is fixed before any
  coin flip, so the label is independent of whether the canary is included. There are at
  most as many as the input has values, by default three quarters (:func:`default_count`).
- **Signals and images**: rows the federation never trains on (the other sites' test
  splits) with a label other than their own. A network that learns them by heart shows it
  in its confidence in the wrong label; one that never saw them predicts their own.

Packs whose target is not one label per example (segmentation masks, denoised signals,
token tags) would need canaries of their own; :func:`make_canaries` refuses them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fedmed.errors import ConfigError
from fedmed.tasks import TaskPack

INPUT_SCALE = 100.0
MAX_CANARIES = 128
# Inputs up to this many values (tables) get quiet-direction canaries; larger ones
# (signals, images) get mislabelled held-out rows (module docstring).
QUIET_MAX_INPUTS = 64


def _arrays(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All inputs and targets of ``dataset`` as two tensors."""
    return next(iter(DataLoader(dataset, batch_size=len(dataset))))  # type: ignore[arg-type]


def default_count(train: Dataset) -> int:
    """Canaries per audited site: three quarters of the input's values for quiet-direction
    canaries, else :data:`MAX_CANARIES`. On heart (26 inputs) 20 canaries gave a higher
    bound without DP than 13 or 26: more canaries are more guesses, but the last
    directions are ones the data moves along (docs/privacy.md)."""
    inputs, _ = _arrays(train)
    size = int(np.prod(inputs.shape[1:]))
    return max(2, size - size // 4) if size <= QUIET_MAX_INPUTS else MAX_CANARIES


def quiet_directions(inputs: np.ndarray, count: int) -> np.ndarray:
    """``count`` orthonormal directions (rows) along which ``inputs`` (examples × values)
    vary least: the smallest-eigenvalue eigenvectors of ``XᵀX``, or, when there are fewer
    examples than values, directions orthogonal to all of them."""
    examples, size = inputs.shape
    if count > size:
        raise ConfigError(
            f"at most {size} canaries for task inputs of {size} values (canaries are "
            "orthogonal to one another)"
        )
    if examples >= size:
        _, vectors = np.linalg.eigh(inputs.T @ inputs)  # ascending eigenvalues
        return vectors[:, :count].T
    basis, _ = np.linalg.qr(inputs.T)  # the span of the examples
    drawn = np.random.default_rng(0).standard_normal((size, count))
    drawn -= basis @ (basis.T @ drawn)
    directions, _ = np.linalg.qr(drawn)
    return directions.T


def make_canaries(
    pack: TaskPack,
    trains: list[Dataset],
    held_out: list[Dataset],
    count: int,
    initial: nn.Module,
    rng: np.random.Generator,
) -> TensorDataset:
    """``count`` canaries (module docstring) for a federation whose training splits are
    ``trains``: quiet directions labelled against the ``initial`` model for inputs of at
    most :data:`QUIET_MAX_INPUTS` values, else rows of ``held_out`` (never trained on)
    with a label other than their own, drawn with ``rng``."""
    pooled = [_arrays(train) for train in trains]
    inputs = torch.cat([x for x, _ in pooled])
    targets = torch.cat([y for _, y in pooled])
    if targets.ndim != 1 or targets.dtype.is_complex:
        raise ConfigError(
            "the privacy audit's canaries need one label per training example; this task's "
            f"targets have shape {tuple(targets.shape[1:])} per example"
        )
    labels = torch.unique(targets)
    if not 2 <= len(labels) <= max(32, len(targets) // 2):
        raise ConfigError(
            f"the privacy audit's canaries need a classification task; {len(labels)} distinct "
            "training targets is not one"
        )
    size = int(np.prod(inputs.shape[1:]))
    if size <= QUIET_MAX_INPUTS:
        canaries, chosen = _quiet_canaries(pack, inputs, labels, count, initial)
        return TensorDataset(canaries, chosen.to(targets.dtype))
    return _mislabelled_canaries(held_out, labels, count, rng)


def _quiet_canaries(
    pack: TaskPack, inputs: torch.Tensor, labels: torch.Tensor, count: int, initial: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quiet directions, each labelled with the label ``initial`` finds least likely."""
    flat = inputs.double().flatten(1).numpy()
    typical = float(np.linalg.norm(flat, axis=1).mean()) or 1.0
    directions = quiet_directions(flat, count) * INPUT_SCALE * typical
    canaries = torch.as_tensor(directions, dtype=inputs.dtype).reshape(count, *inputs.shape[1:])
    initial.eval()
    with torch.no_grad():
        outputs = initial(canaries)
        losses = torch.stack(
            [
                torch.stack([pack.loss(outputs[i : i + 1], label.reshape(1)) for label in labels])
                for i in range(count)
            ]
        )
    return canaries, labels[losses.argmax(dim=1)]


def _mislabelled_canaries(
    held_out: list[Dataset], labels: torch.Tensor, count: int, rng: np.random.Generator
) -> TensorDataset:
    """``count`` rows of ``held_out``, each with a label drawn from the others."""
    pooled = [_arrays(rows) for rows in held_out]
    inputs = torch.cat([x for x, _ in pooled])
    targets = torch.cat([y for _, y in pooled])
    if count > len(targets):
        raise ConfigError(
            f"at most {len(targets)} canaries: the other sites hold out {len(targets)} rows"
        )
    rows = torch.from_numpy(rng.choice(len(targets), size=count, replace=False))
    own = targets[rows]
    others = [labels[labels != label] for label in own]
    wrong = torch.stack([choices[int(rng.integers(len(choices)))] for choices in others])
    return TensorDataset(inputs[rows], wrong.to(targets.dtype))
