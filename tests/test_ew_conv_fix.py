"""Expanded weights (``ew``) on convolutions whose output gradient is a strided view.

``fedmed.privacy.ew_conv_fix`` hands torch's grouped per-example convolution gradient a
contiguous copy; without it ``ew`` raised on MONAI's DenseNet (imaging-cls) and on the
CAML network (icd), and ``auto`` fell back to the slower ``hooks``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.grad_sample.utils import wrap_model
from torch import nn
from torch.nn.utils._expanded_weights import conv_utils
from torch.utils.data import TensorDataset

from fedmed.privacy.trainer import DPTrainer, poisson_schedule, select_grad_sample_mode
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, train_round


class DenseLayer(nn.Module):
    """A DenseNet layer in miniature: the convolution's output is concatenated to its input,
    so the gradient reaching the convolution is a slice of the concatenation's gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.norm = nn.GroupNorm(1, 5)
        self.head = nn.Linear(5, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.norm(torch.cat([images, self.conv(images)], dim=1))
        return self.head(features.mean(dim=(2, 3)))


def per_example_gradients(model: nn.Module, mode: str, inputs: torch.Tensor,
                          targets: torch.Tensor) -> list[torch.Tensor]:
    wrapped = wrap_model(model, grad_sample_mode=mode, batch_first=True, loss_reduction="mean")
    nn.functional.binary_cross_entropy_with_logits(wrapped(inputs), targets).backward()
    return [p.grad_sample.detach() for p in model.parameters()]


def test_torch_still_raises_on_a_strided_gradient_without_the_fix() -> None:
    """The day torch fixes its ``view``, this fails and the module can go."""
    original = conv_utils.conv_group_weight_grad_sample.__wrapped__
    conv = nn.Conv2d(2, 3, 3, padding=1)
    inputs = torch.randn(4, 2, 5, 5)
    strided = torch.randn(4, 5, 5, 5)[:, 2:]  # what torch.cat's backward hands a layer
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        original(inputs, strided, conv.weight.shape, (1, 1), (1, 1), (1, 1), 4, torch.conv2d)


@pytest.mark.parametrize("batch", [1, 5, 31])  # the grouped path runs below 32 examples
def test_ew_gives_the_per_example_gradients_of_hooks_through_a_concatenation(batch: int) -> None:
    torch.manual_seed(0)
    model = DenseLayer()
    inputs, targets = torch.randn(batch, 2, 6, 6), torch.rand(batch, 1)
    hooks = per_example_gradients(copy.deepcopy(model), "hooks", inputs, targets)
    ew = per_example_gradients(copy.deepcopy(model), "ew", inputs, targets)
    for expected, got in zip(hooks, ew, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_auto_picks_ew_for_the_packs_it_used_to_fail_on() -> None:
    """The packs' own models, as a node builds them: imaging-cls on random 32 px images of
    its input shape (simulating its site is slow, and the choice depends on the model only),
    icd on a built-in site's notes."""
    imaging, icd = get_task("imaging-cls"), get_task("icd")
    generator = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.rand(32, 1, 32, 32, generator=generator),
                           torch.randint(0, 2, (32,), generator=generator).float())
    notes = icd.load_site(icd.site_names()[0], None, 0).train
    for pack, data in ((imaging, images), (icd, notes)):
        chosen = select_grad_sample_mode(pack.build_model(), data, pack.loss,
                                         pack.default_batch_size)
        assert chosen == "ew", pack.name


def test_a_dp_round_through_a_concatenation_runs_in_ew_and_verifies() -> None:
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(40, 2, 6, 6), torch.rand(40, 1))
    rate, steps = poisson_schedule(len(data), 8)
    trainer = DPTrainer(1.0, rate, steps * 2, 1.0, nn.functional.binary_cross_entropy_with_logits,
                        grad_sample_mode="auto")
    pack = get_task("heart")  # its loss: binary cross-entropy on logits, as the model gives
    model = DenseLayer()
    before = [p.detach().clone() for p in model.parameters()]
    settings = TrainSettings(local_epochs=2, batch_size=8, lr=0.1, seed=2)
    result = train_round(pack, model, data, settings, torch.device("cpu"), wrap=trainer.wrap)
    trainer.verify()
    assert trainer.mode_used == "ew" and result.steps == steps * 2
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
