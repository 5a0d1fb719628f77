"""``grad-sample-mode bookkeeping`` (fedmed.privacy.bookkeeping): for models made of linear
layers it clips and sums what Opacus's per-example gradients do, trains to the same weights
under the same noise, is refused where its outer-product rule would be wrong, is what ``auto``
picks for the tabular packs, and is what a heart node's signed ``dp-release`` records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.grad_sample.utils import wrap_model
from torch import nn
from torch.utils.data import TensorDataset

from fedmed.clients.site_home import SiteHome
from fedmed.errors import ConfigError
from fedmed.privacy import trainer as trainer_module
from fedmed.privacy.bookkeeping import LinearBookkeeper
from fedmed.privacy.lean_step import clip_and_sum
from fedmed.privacy.trainer import select_grad_sample_mode
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings
from tests.test_max_physical_batch import dp_round
from tests.test_privacy_node import SITE, initial_weights, instructions, node


def mlp(frozen_first: bool = False) -> nn.Module:
    """Three linear layers, one without a bias; optionally the first frozen."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5, bias=False), nn.ReLU(),
                        nn.Linear(5, 1), nn.Flatten(0))
    if frozen_first:
        net[0].requires_grad_(False)
    return net


def batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return (torch.randn(n, 6, generator=generator) * 3,
            torch.randint(0, 2, (n,), generator=generator).float())


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(outputs, targets)


def per_example_gradients(net: nn.Module) -> list[torch.Tensor]:
    """Opacus's reference: per-example gradients of ``batch()`` from its hooks."""
    inputs, targets = batch()
    wrapped = wrap_model(net, grad_sample_mode="hooks", batch_first=True, loss_reduction="mean")
    loss(wrapped(inputs), targets).backward()
    return [p.grad_sample for p in net.parameters() if p.requires_grad]


@pytest.mark.parametrize("frozen_first", [False, True])
def test_clipped_sums_equal_opacus_per_example_clipping(frozen_first: bool) -> None:
    inputs, targets = batch()
    reference_net = mlp(frozen_first)
    samples = per_example_gradients(reference_net)
    norms = torch.stack([g.reshape(12, -1).norm(dim=1) for g in samples], dim=1).norm(dim=1)
    clip = float(norms.median())  # about half the examples clipped, half not
    assert (norms > clip).any() and (norms < clip).any()
    net = mlp(frozen_first)
    keeper = LinearBookkeeper(net)
    loss(net(inputs), targets).backward()
    params = [p for p in net.parameters() if p.requires_grad]
    found = keeper.clipped_sums(params, clip)
    trainable = [p for p in reference_net.parameters() if p.requires_grad]
    expected = clip_and_sum(trainable, samples, clip)
    assert len(found) == len(expected) == (3 if frozen_first else 5)
    for a, b in zip(found, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the recorded batch is consumed: a step without a new forward pass sums nothing
    assert all(not s.any() for s in keeper.clipped_sums(params, clip))


@pytest.mark.parametrize("physical", [0, 5])
def test_a_bookkeeping_round_trains_to_the_weights_of_a_hooks_round(physical: int) -> None:
    """Same secret seed, so the same noise draws; whole batches and parts of 5."""
    data = get_task("heart").load_site(SITE, None, 0).train
    settings = TrainSettings(local_epochs=2, batch_size=16, lr=0.05, seed=0)
    found, trainer = dp_round(data, physical, settings, mode="bookkeeping")
    expected, _ = dp_round(data, physical, settings, mode="hooks")
    assert trainer.mode_used == "bookkeeping"
    for a, b in zip(found, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    start = initial_weights()
    assert not all(np.allclose(a, b) for a, b in zip(found, start, strict=True))


class Twice(nn.Module):
    """One linear layer applied twice: its examples' gradients are sums of two products."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 4)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layer(self.layer(inputs)).sum(1)


@pytest.mark.parametrize(("net", "inputs", "message"), [
    (nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(8, 1)), torch.randn(4, 1, 6),
     "all belong to nn.Linear"),
    (nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)), torch.randn(4, 3, 4),
     r"input of shape \(4, 3, 4\)"),
    (Twice(), torch.randn(4, 4), "ran twice"),
], ids=["convolution", "sequence input", "shared layer"])
def test_models_the_rule_would_get_wrong_are_refused(
    net: nn.Module, inputs: torch.Tensor, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        LinearBookkeeper(net)
        net(inputs).sum().backward()


def test_a_model_is_hooked_once() -> None:
    net = mlp()
    LinearBookkeeper(net)
    with pytest.raises(ConfigError, match="already has bookkeeping hooks"):
        LinearBookkeeper(net)


def test_auto_picks_bookkeeping_only_where_it_clips_like_opacus() -> None:
    trainer_module._MODE_CACHE.clear()
    for name in ("heart", "heart-flamby", "rhdnase", "rhdnase-split"):
        pack = get_task(name)
        data = pack.load_site(pack.site_names()[0], None, 0).train
        assert select_grad_sample_mode(pack.build_model(), data, pack.loss, 16) == "bookkeeping"
    sequences = TensorDataset(torch.randn(8, 3, 4), torch.rand(8))
    per_step = nn.Sequential(nn.Linear(4, 1), nn.Flatten(1), nn.Linear(3, 1), nn.Flatten(0))
    assert select_grad_sample_mode(per_step, sequences, loss, 4) == "ew"
    ecg = get_task("ecg")
    data = ecg.load_site(ecg.site_names()[0], None, 0).train
    assert select_grad_sample_mode(ecg.build_model(), data, ecg.loss, 8) == "ew"


def test_a_heart_node_trains_with_bookkeeping_and_signs_it(tmp_path: Path) -> None:
    """Through the node's entry point (``HospitalClient.fit``), as ``fedmed run`` drives it."""
    client = node(tmp_path / "home")
    client.fit(initial_weights(), instructions(epsilon=1.0)(1))
    releases = SiteHome.open(tmp_path / "home", SITE, "heart").audit().of_kind("dp-release")
    assert [r["grad_sample_mode"] for r in releases] == ["bookkeeping"]
