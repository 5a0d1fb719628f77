"""Per-example gradients of ``nn.ConvTranspose2d`` for Opacus, in closed form.

Why this exists: Opacus 1.6 has per-example gradient rules for convolutions but none for
transposed convolutions, so its ``hooks`` mode runs ``torch.func``'s ``vmap`` over every
``ConvTranspose2d`` (its "functorch fallback"), which took about a fifth of a DP-SGD step of
``imaging-seg``'s U-Net (two upsampling layers; docs/privacy.md § DP overhead per task
pack). Expanded weights cannot run the layer at all. Opacus's documented extension point,
:func:`opacus.grad_sample.register_grad_sampler`, takes a rule like the one below.

The rule: a transposed convolution is the adjoint of the convolution with the same kernel
size, stride, padding and dilation, so every input position ``l`` spreads its value over
one patch of the output. Unfolding the output gradient with those parameters gives, for
each input position, the patch it reached (``F.unfold``: one column per input position), and
example ``n``'s weight gradient is ``Σ_l x[n, c_in, l] · patch[n, (c_out, kh, kw), l]``,
per group. The bias gradient is the output gradient summed over space. Tests compare it with
Opacus's own fallback and with one backward pass per example.
"""

from __future__ import annotations

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.nn import functional as F


@register_grad_sampler(nn.ConvTranspose2d)
def transposed_conv_grad_sample(
    layer: nn.ConvTranspose2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Each example's gradient of ``layer.weight`` (and bias) from its input and output gradient."""
    inputs = activations[0].to(backprops.dtype)
    examples, groups = inputs.shape[0], layer.groups
    patches = F.unfold(
        backprops, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
        stride=layer.stride,
    )  # fmt: skip
    positions = patches.shape[-1]  # one per input pixel; explicit, so an empty batch works too
    per_group_inputs = inputs.reshape(examples, groups, inputs.shape[1] // groups, positions)
    per_group_patches = patches.reshape(examples, groups, patches.shape[1] // groups, positions)
    gradients: dict[nn.Parameter, torch.Tensor] = {}
    if layer.weight.requires_grad:
        weight = torch.einsum("ngcl,ngkl->ngck", per_group_inputs, per_group_patches)
        gradients[layer.weight] = weight.reshape(examples, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        gradients[layer.bias] = backprops.sum(dim=(2, 3))
    return gradients
