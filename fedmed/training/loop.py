"""One round of local training, shared by every task pack and by the baselines.

The node owns the optimiser and the data loader so it can hand them to the DP
trainer (``fedmed.privacy``) before the loop runs; the pack only supplies the model
and the loss. FedProx's proximal term is applied as a decoupled step after each
optimiser step (``w -= lr * mu * (w - w_global)``): it uses no data, so it costs no
privacy and works the same with or without per-sample gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.tasks.augmentation import seed_views
from fedmed.tasks.base import TaskPack

# Wraps (model, optimizer, loader) before training, e.g. Opacus's make_private.
LoopWrapper = Callable[[nn.Module, Optimizer, DataLoader], tuple[nn.Module, Optimizer, DataLoader]]


@dataclass(frozen=True)
class TrainSettings:
    """Local training hyper-parameters of one round."""

    local_epochs: int
    batch_size: int
    lr: float
    proximal_mu: float = 0.0
    momentum: float = 0.0
    seed: int = 0
    # 0: every site trains in batches of ``batch_size``; N: a site with more than N batches
    # of that size takes larger ones, N an epoch (:meth:`batch_for`).
    steps_per_epoch: int = 0

    @classmethod
    def for_pack(cls, config: FederationConfig, pack: TaskPack, seed: int = 0) -> TrainSettings:
        """A federation's local training settings: its own, or the pack's default where it
        leaves one out (``None``: ``local_epochs``, ``batch_size``, ``lr``; a 0 given is a
        ConfigError of :meth:`FederationConfig.validate`, never a default). The one place
        that fallback is made: the coordinator's round instructions, the baselines and the
        generalization study must train alike."""
        return cls(
            local_epochs=_given(config.local_epochs, pack.default_local_epochs),
            batch_size=_given(config.batch_size, pack.default_batch_size),
            lr=_given(config.lr, pack.default_lr),
            momentum=config.momentum,
            seed=seed,
            steps_per_epoch=config.steps_per_epoch or 0,
        )

    def batch_for(self, examples: int) -> int:
        """The batch a site with ``examples`` training examples trains with.

        ``batch_size``, unless ``steps_per_epoch`` is set and the site has more than that many
        batches of it: then ceil(examples / steps), the batch that splits its data into that
        many steps (fewer where rounding up leaves the last ones empty). ``batch_size`` is
        the floor. Why: DP-SGD adds its noise once per step, so with one fixed batch a site
        with more data takes more noisy steps and can end up worse than a small one, while
        below some batch the noise swamps every step (docs/privacy.md § deid-ner: 32 is that
        floor for the BiLSTM-CRF). The training loop and the privacy planning of a round both
        call this, so the ledger accounts the batch that ran.
        """
        if self.steps_per_epoch:
            return max(self.batch_size, math.ceil(examples / self.steps_per_epoch))
        return self.batch_size

    def __post_init__(self) -> None:
        """Refuse settings no round can train with (a node reads them from the coordinator)."""
        numbers = (self.lr, self.momentum, self.proximal_mu)
        if not all(math.isfinite(value) for value in numbers):
            raise ConfigError(
                f"training settings must be finite: lr {self.lr}, momentum {self.momentum}, "
                f"proximal_mu {self.proximal_mu}"
            )
        if (self.local_epochs < 0 or self.batch_size < 1 or self.lr <= 0
                or self.steps_per_epoch < 0):
            raise ConfigError(
                f"training settings out of range: local-epochs {self.local_epochs} (>= 0), "
                f"batch-size {self.batch_size} (>= 1), lr {self.lr} (> 0), "
                f"steps-per-epoch {self.steps_per_epoch} (>= 0)"
            )
        if not 0 <= self.momentum < 1 or self.proximal_mu < 0:
            raise ConfigError(
                f"training settings out of range: momentum {self.momentum} (in [0, 1)), "
                f"proximal_mu {self.proximal_mu} (>= 0)"
            )


def _given(value: int | float | None, default: int | float) -> Any:
    """``value`` unless it was left out (``None``)."""
    return default if value is None else value


@dataclass(frozen=True)
class TrainResult:
    """What one round of local training did (steps feed the privacy accountant)."""

    num_examples: int
    mean_loss: float
    steps: int


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Every entry of the model's state dict as NumPy arrays, in state-dict order."""
    return [value.detach().cpu().numpy().copy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[np.ndarray]) -> None:
    """Load arrays produced by :func:`get_weights` (ValueError on a shape mismatch)."""
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(f"expected {len(state)} weight arrays, received {len(weights)}")
    new_state = {}
    for (key, current), array in zip(state.items(), weights, strict=True):
        if tuple(current.shape) != tuple(array.shape):
            raise ValueError(
                f"weight {key!r}: expected shape {tuple(current.shape)}, received {array.shape}"
            )
        new_state[key] = torch.as_tensor(np.asarray(array), dtype=current.dtype)
    model.load_state_dict(new_state)


def _completed_steps(optimizer: Optimizer) -> int:
    """1, or 0 after a part of a DP-SGD batch that a node's physical-batch limit split
    (``fedmed.privacy.trainer``): Opacus's optimizer then only clipped and summed that
    part's per-example gradients, and the step — noise included — comes with the last
    part. Opacus marks such a call in ``_is_last_step_skipped``, its one record of it."""
    return 0 if getattr(optimizer, "_is_last_step_skipped", False) else 1


def train_round(
    pack: TaskPack,
    model: nn.Module,
    dataset: Dataset,
    settings: TrainSettings,
    device: torch.device,
    wrap: LoopWrapper | None = None,
) -> TrainResult:
    """Train ``model`` in place for ``settings.local_epochs`` epochs on ``dataset``.

    An augmented training split draws its views from the round's seed and the epoch
    (:func:`fedmed.tasks.augmentation.seed_views`), so a rerun trains on the same views."""
    torch.manual_seed(settings.seed)
    model.to(device)
    model.train()  # before any wrapper: Opacus's make_private rejects a model in eval mode
    anchor = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu else []
    generator = torch.Generator().manual_seed(settings.seed)
    batch = settings.batch_for(len(dataset))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=generator)
    optimizer: Optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum
    )
    trained, optimizer, loader = (
        wrap(model, optimizer, loader) if wrap else (model, optimizer, loader)
    )
    total_loss, batches, steps = 0.0, 0, 0
    for epoch in range(settings.local_epochs):
        seed_views(dataset, settings.seed, epoch)
        for inputs, targets in loader:
            if len(inputs) == 0:  # Poisson sampling can draw an empty batch
                optimizer.zero_grad(set_to_none=True)
                optimizer.step()
                steps += 1
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = pack.loss(trained(inputs.to(device)), targets.to(device))
            loss.backward()
            optimizer.step()
            completed = _completed_steps(optimizer)
            steps += completed
            if anchor and completed:  # FedProx's term once a step, not once a part
                with torch.no_grad():
                    for param, start in zip(model.parameters(), anchor, strict=True):
                        param.sub_(settings.lr * settings.proximal_mu * (param - start))
            total_loss += float(loss.detach())
            batches += 1
    return TrainResult(
        num_examples=len(dataset),  # type: ignore[arg-type]
        mean_loss=total_loss / max(batches, 1),
        steps=steps,
    )
