"""Ghost clipping (``grad_sample_mode="ghost"``) clips exactly like Opacus's hooks.

Ghost clipping never stores every example's gradient, so the tests compare what DP-SGD
releases before noise: the clipped, summed gradient (``p.summed_grad``) of one batch,
through :meth:`DPTrainer.wrap` as a node runs it, on a small model of every layer kind the
task packs use — including RNN cells, which ghost cannot give ghost norms (their weights
act at every time step) and so clips through per-example gradients instead.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from opacus.layers import DPLSTM
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmed.privacy.sequence_lstm import SequenceLSTM
from fedmed.privacy.trainer import DPTrainer, LossFn, poisson_schedule
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, train_round

BATCH = 12
CLIP = 0.05  # small enough that every example of these models is clipped


class LastStep(nn.Module):
    """A DPLSTM over (batch, time, features); the class scores read from the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = DPLSTM(3, 5, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(inputs)[0][:, -1])


class MeanOverTime(nn.Module):
    """fedmed's SequenceLSTM over (batch, time, features); class scores from the mean output."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = SequenceLSTM(3, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(inputs).mean(dim=1))


class Transpose(nn.Module):
    """(batch, tokens, channels) → (batch, channels, tokens) for a Conv1d over tokens."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.transpose(1, 2)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets.long())


def binary(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(outputs, targets.float())


# name: (model builder, inputs, targets, loss) — one per layer kind of the packs
CASES: dict[str, tuple[Callable[[], nn.Module], torch.Tensor, torch.Tensor, LossFn]] = {
    "linear (heart, rhdnase)": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1), nn.Flatten(0)),
        torch.randn(BATCH, 6),
        torch.randint(0, 2, (BATCH,)),
        binary,
    ),
    "conv1d + groupnorm (ecg)": (
        lambda: nn.Sequential(
            nn.Conv1d(2, 8, 5, padding=2), nn.GroupNorm(2, 8), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3),
        ),
        torch.randn(BATCH, 2, 32),
        torch.randint(0, 3, (BATCH,)),
        cross_entropy,
    ),
    "grouped conv2d + groupnorm (imaging)": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.GroupNorm(4, 8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, groups=8), nn.GroupNorm(4, 8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1), nn.Flatten(0),
        ),
        torch.randn(BATCH, 3, 16, 16),
        torch.randint(0, 2, (BATCH,)),
        binary,
    ),
    "conv-transpose2d (imaging-seg)": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(4, 1, 2, stride=2), nn.Flatten(),
        ),
        torch.randn(BATCH, 1, 8, 8),
        torch.randint(0, 2, (BATCH, 64)),
        binary,
    ),
    "embedding + conv1d (icd)": (
        lambda: nn.Sequential(
            nn.Embedding(40, 6), Transpose(), nn.Conv1d(6, 4, 3), nn.AdaptiveMaxPool1d(1),
            nn.Flatten(), nn.Linear(4, 5),
        ),
        torch.randint(0, 40, (BATCH, 10)),
        torch.randint(0, 2, (BATCH, 5)),
        binary,
    ),
    "sequence lstm (ecg-lstm)": (
        MeanOverTime,
        torch.randn(BATCH, 7, 3),
        torch.randint(0, 3, (BATCH,)),
        cross_entropy,
    ),
    "dplstm (deid-ner)": (
        LastStep,
        torch.randn(BATCH, 7, 3),
        torch.randint(0, 3, (BATCH,)),
        cross_entropy,
    ),
}


def clipped_sum(case: str, mode: str) -> list[torch.Tensor]:
    """One batch's clipped, summed gradient (before noise) under ``mode``, seeded alike."""
    build, inputs, targets, loss = CASES[case]
    torch.manual_seed(0)
    model = build()
    data = TensorDataset(inputs, targets)
    rate, steps = poisson_schedule(len(data), BATCH)
    trainer = DPTrainer(1.0, rate, steps, CLIP, loss, grad_sample_mode=mode, secret_seed=7)
    private_model, optimizer, _ = trainer.wrap(
        model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(data, batch_size=BATCH)
    )
    optimizer.zero_grad(set_to_none=True)
    loss(private_model(inputs), targets).backward()
    optimizer.step()
    assert trainer.mode_used == mode
    return [p.summed_grad.detach().clone() for p in optimizer.params]  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", list(CASES))
def test_ghost_clips_and_sums_like_hooks(case: str) -> None:
    hooks, ghost = clipped_sum(case, "hooks"), clipped_sum(case, "ghost")
    for a, b in zip(hooks, ghost, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    norm = torch.cat([g.flatten() for g in hooks]).norm()
    assert 0 < norm <= BATCH * CLIP * (1 + 1e-4)  # clipped: at most C per example


def test_ghost_round_runs_verifies_and_steps_on_empty_poisson_batches() -> None:
    pack = get_task("heart")
    data = pack.load_site("switzerland", None, 0)
    tiny = TensorDataset(*(t[:4] for t in data.train.tensors))  # q = 1/4: empty draws are common
    rate, steps = poisson_schedule(len(tiny), 1)
    trainer = DPTrainer(1.0, rate, steps * 10, 1.0, pack.loss, grad_sample_mode="ghost")
    model = pack.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    settings = TrainSettings(local_epochs=10, batch_size=1, lr=0.1, seed=3)
    result = train_round(pack, model, tiny, settings, torch.device("cpu"), wrap=trainer.wrap)
    trainer.verify()  # exactly the planned (σ, q, steps), empty draws included
    assert result.steps == steps * 10 and trainer.mode_used == "ghost"
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

