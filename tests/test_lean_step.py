"""``fedmed.privacy.lean_step``: Opacus's DP step with its bookkeeping paid once a step trains
bit-identically to Opacus's own ``pre_step``, in every per-example mode, with empty Poisson
draws and with batches split by ``max-physical-batch``, through ``DPTrainer``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from opacus.optimizers import DPOptimizer
from torch import nn
from torch.utils.data import TensorDataset

from fedmed.privacy import lean_step
from fedmed.privacy.trainer import DPTrainer, poisson_schedule
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, train_round


def model() -> nn.Module:
    """Several parameter tensors, one without a bias."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8, bias=False), nn.Tanh(),
                         nn.Linear(8, 1), nn.Flatten(0))


def trained(mode: str, examples: int, batch: int, physical: int) -> list[torch.Tensor]:
    """Weights after a verified DP-SGD round (3 epochs, clip 0.5: some examples clipped,
    some not)."""
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(examples, 6, generator=generator),
                         torch.randint(0, 2, (examples,), generator=generator).float())
    pack = get_task("heart")  # its loss: binary cross-entropy on logits
    rate, steps = poisson_schedule(examples, batch)
    dp = DPTrainer(1.0, rate, 3 * steps, 0.5, pack.loss, grad_sample_mode=mode, secret_seed=4,
                   max_physical_batch=physical)
    net = model()
    passes: list[int] = []
    net.register_forward_pre_hook(lambda _, inputs: passes.append(len(inputs[0])))
    settings = TrainSettings(local_epochs=3, batch_size=batch, lr=0.1, seed=0)
    result = train_round(pack, net, data, settings, torch.device("cpu"), wrap=dp.wrap)
    dp.verify()
    if physical:
        assert max(passes) <= physical < batch
    if examples < 8:  # q = 1/4 on 4 examples: some of the 12 draws were empty (no pass)
        assert len(passes) < result.steps
    return [p.detach().clone() for p in net.parameters()]


def opacus_own_step(optimizer: DPOptimizer, clipped_sums: Callable | None = None) -> None:
    """Opacus's ``pre_step`` as shipped, given per-example gradients of an empty batch
    where no backward pass ran (the one thing the lean step adds)."""
    pre_step = optimizer.pre_step

    def tolerating_empty(closure: Callable[[], float] | None = None) -> bool | None:
        for param in optimizer.params:
            if getattr(param, "grad_sample", None) is None:
                param.grad_sample = param.new_zeros((0, *param.shape))
        return pre_step(closure)

    optimizer.pre_step = tolerating_empty  # type: ignore[method-assign]


@pytest.mark.parametrize("mode", ["ew", "hooks", "functorch"])
@pytest.mark.parametrize(("examples", "batch", "physical"), [(40, 8, 0), (40, 8, 3), (4, 1, 0)],
                         ids=["whole batches", "split batches", "empty draws"])
def test_lean_step_trains_bit_identically_to_opacus(
    mode: str, examples: int, batch: int, physical: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean = trained(mode, examples, batch, physical)
    monkeypatch.setattr(lean_step, "install", opacus_own_step)
    reference = trained(mode, examples, batch, physical)
    assert all(torch.equal(a, b) for a, b in zip(lean, reference, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(lean, model().parameters(), strict=True))
