"""fedmed's closed-form per-example gradients of ``ConvTranspose2d`` for Opacus.

Opacus 1.6 has no rule for the layer (its ``hooks`` mode fell back to ``vmap``);
``fedmed.privacy.conv_transpose_grad`` registers one. It must give every example's exact
gradient — checked against one backward pass per example — for the strides, paddings,
dilations and groups a U-Net may use, and it is what a node's DP-SGD on imaging-seg runs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.utils import wrap_model
from torch import nn

from fedmed.privacy.conv_transpose_grad import transposed_conv_grad_sample
from fedmed.tasks import get_task
from tests.node_round import verified_dp_epoch

LAYERS = {  # in, out, kernel, stride, padding, output padding, dilation, groups, bias
    "upsample x2": (4, 3, 3, 2, 1, 1, 1, 1, True),
    "kernel 2 stride 2": (4, 3, 2, 2, 0, 0, 1, 1, True),
    "stride 1": (2, 5, 3, 1, 1, 0, 1, 1, False),
    "dilated": (3, 2, 3, 2, 1, 0, 2, 1, True),
    "rectangular": (4, 4, (3, 2), (2, 1), (1, 0), (1, 0), 1, 1, True),
    "grouped": (4, 6, 3, 2, 1, 1, 1, 2, True),
    "depthwise": (4, 4, 2, 2, 0, 0, 1, 4, False),
}


def one_example_at_a_time(layer: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    """Ground truth: each example's gradient from its own backward pass, stacked."""
    rows = []
    for example in inputs:
        layer.zero_grad()
        (layer(example[None]) ** 2).sum().backward()
        rows.append([p.grad.detach().clone() for p in layer.parameters()])
    return [torch.stack(column) for column in zip(*rows, strict=True)]


@pytest.mark.parametrize("name", list(LAYERS))
def test_per_example_gradients_equal_one_backward_pass_per_example(name: str) -> None:
    cin, cout, kernel, stride, padding, extra, dilation, groups, bias = LAYERS[name]
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(cin, cout, kernel, stride, padding=padding, output_padding=extra,
                               dilation=dilation, groups=groups, bias=bias)
    inputs = torch.randn(5, cin, 7, 5)
    expected = one_example_at_a_time(copy.deepcopy(layer), inputs)
    wrapped = wrap_model(layer, grad_sample_mode="hooks", batch_first=True, loss_reduction="sum")
    (wrapped(inputs) ** 2).sum().backward()
    got = [p.grad_sample for p in layer.parameters()]
    assert len(got) == len(expected)
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)


def test_an_empty_batch_gives_empty_gradients() -> None:
    layer = nn.ConvTranspose2d(4, 3, 3, 2, 1, 1)
    got = transposed_conv_grad_sample(layer, [torch.zeros(0, 4, 5, 5)], torch.zeros(0, 3, 10, 10))
    assert got[layer.weight].shape == (0, 4, 3, 3, 3) and got[layer.bias].shape == (0, 3)


def test_imaging_seg_dp_round_uses_the_rule_and_matches_vmap() -> None:
    """The U-Net a node trains: Opacus's hooks run fedmed's rule (not the vmap fallback), the
    per-example gradients of the whole model equal ``functorch`` mode's, and a DP round runs."""
    assert GradSampleModule.GRAD_SAMPLERS[nn.ConvTranspose2d] is transposed_conv_grad_sample
    pack = get_task("imaging-seg")
    train = pack.load_site(pack.site_names()[0], None, 0).train
    pairs = [train[i] for i in range(4)]
    images, masks = (torch.stack(column) for column in zip(*pairs, strict=True))
    torch.manual_seed(0)
    model = pack.build_model()
    per_mode = {}
    for mode in ("hooks", "functorch"):
        clone = copy.deepcopy(model)
        wrapped = wrap_model(clone, grad_sample_mode=mode, batch_first=True, loss_reduction="mean")
        torch.manual_seed(1)  # the same dropout masks in both modes
        pack.loss(wrapped(images), masks).backward()
        per_mode[mode] = [p.grad_sample.detach() for p in clone.parameters()]
    for hooks, vmap in zip(per_mode["hooks"], per_mode["functorch"], strict=True):
        torch.testing.assert_close(hooks, vmap, rtol=1e-4, atol=1e-6)

    trainer, _ = verified_dp_epoch(pack, model, torch.utils.data.Subset(train, range(16)), 4)
    assert trainer.mode_used == "hooks"
