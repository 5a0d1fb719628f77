"""Expanded weights (``ew``) with fedmed's per-example convolution gradients.

``fedmed.privacy.ew_conv_fix`` computes every batch's per-example convolution weight
gradients from a strided unfold of the input instead of torch's two paths (a grouped
convolution below 32 examples, which raised on a strided output gradient — MONAI's
DenseNet in imaging-cls, the CAML network of icd — and ``F.unfold`` above): the same
gradients as Opacus's ``hooks`` at every batch size, for every convolution the packs use.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.grad_sample.utils import wrap_model
from torch import nn
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


CONVOLUTIONS = {
    "3x3 padded": (lambda: nn.Conv2d(3, 5, 3, padding=1), (3, 9, 9)),
    "strided, dilated, uneven": (
        lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        (3, 9, 8)),
    "1x1": (lambda: nn.Conv2d(2, 3, 1), (2, 5, 5)),
    "1-D strided, dilated": (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2, dilation=2), (3, 20)),
    "1-D same": (lambda: nn.Conv1d(2, 3, 3, padding="same"), (2, 11)),
    "grouped (torch's own path)": (lambda: nn.Conv2d(4, 6, 3, groups=2), (4, 7, 7)),
}


@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
@pytest.mark.parametrize("batch", [1, 5, 31, 40])  # torch switched paths at 32 examples
def test_ew_gives_the_per_example_gradients_of_hooks(name: str, batch: int) -> None:
    make, shape = CONVOLUTIONS[name]
    torch.manual_seed(0)
    model = nn.Sequential(make(), nn.Flatten(), nn.LazyLinear(1))
    inputs, targets = torch.randn(batch, *shape), torch.rand(batch, 1)
    model(inputs)  # materialise the lazy head
    hooks = per_example_gradients(copy.deepcopy(model), "hooks", inputs, targets)
    ew = per_example_gradients(copy.deepcopy(model), "ew", inputs, targets)
    for expected, got in zip(hooks, ew, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


class TransposedInput(nn.Module):
    """ICD's layout: the convolution reads a transposed (non-contiguous) tensor, unpadded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(tokens.transpose(1, 2)).mean(dim=2))


def test_ew_reads_a_transposed_unpadded_input_correctly() -> None:
    torch.manual_seed(0)
    model = TransposedInput()
    inputs, targets = torch.randn(6, 10, 4), torch.rand(6, 1)
    hooks = per_example_gradients(copy.deepcopy(model), "hooks", inputs, targets)
    ew = per_example_gradients(copy.deepcopy(model), "ew", inputs, targets)
    for expected, got in zip(hooks, ew, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_ungrouped_convolutions_skip_im2col(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the module: torch's ``F.unfold`` (im2col) is not what runs."""

    def im2col(*_: object, **__: object) -> torch.Tensor:
        raise AssertionError("F.unfold was called")

    monkeypatch.setattr(torch.nn.functional, "unfold", im2col)
    for conv, inputs in ((nn.Conv2d(3, 5, 3, padding=1), torch.randn(7, 3, 6, 6)),
                         (nn.Conv1d(3, 5, 3), torch.randn(40, 3, 9))):
        wrapped = wrap_model(nn.Sequential(conv, nn.Flatten()), grad_sample_mode="ew",
                             batch_first=True, loss_reduction="mean")
        wrapped(inputs).sum().backward()
        assert conv.weight.grad_sample.shape == (len(inputs), *conv.weight.shape)


@pytest.mark.parametrize("batch", [1, 5, 31])
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
