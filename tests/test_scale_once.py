"""``fedmed.privacy.trainer._scale_once``: Opacus's gradient scaling with its divisor computed
once a step gives bit-identical training, in every per-example mode, through ``DPTrainer``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedmed.privacy import trainer as trainer_module
from fedmed.privacy.trainer import DPTrainer, poisson_schedule
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, train_round


def model() -> nn.Module:
    """Several parameter tensors (the quadratic cost grows with their number)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def trained(mode: str) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(40, 6, generator=generator),
                         torch.randint(0, 2, (40, 1), generator=generator).float())
    pack = get_task("heart")  # its loss: binary cross-entropy on logits
    rate, steps = poisson_schedule(len(data), 8)
    dp = DPTrainer(1.0, rate, 3 * steps, 1.0, pack.loss, grad_sample_mode=mode, secret_seed=4)
    net = model()
    settings = TrainSettings(local_epochs=3, batch_size=8, lr=0.1, seed=0)
    train_round(pack, net, data, settings, torch.device("cpu"), wrap=dp.wrap)
    dp.verify()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("mode", ["ew", "hooks", "ghost"])
def test_scaling_once_trains_bit_identically_to_opacus(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = trained(mode)
    monkeypatch.setattr(trainer_module, "_scale_once", lambda _: None)  # Opacus's own
    reference = trained(mode)
    assert all(torch.equal(a, b) for a, b in zip(fast, reference, strict=True))
