"""Per-example convolution gradients for PyTorch's expanded weights (``ew``): one fast path.

Why this exists. Torch 2.13's expanded weights compute a convolution's per-example weight
gradients two ways (``torch.nn.utils._expanded_weights.conv_utils``): below 32 examples
(``THRESHOLD``) as one convolution grouped over the batch, from 32 up by unfolding the
input with ``F.unfold`` (im2col) and one batched product. Both cost more than they need on
the packs' models, and the first one fails:

- the grouped path reshapes the output gradient with ``view``, which raises "view size is
  not compatible with input tensor's size and stride" when that gradient is a strided
  slice — the convolution's output went on into ``torch.cat`` (each layer of MONAI's
  DenseNet in ``imaging-cls``) or a transpose (the CAML attention of ``icd``);
- on the packs' small feature maps the grouped path took 2–3 times as long as unfolding,
  and ``F.unfold`` itself copies element by element where a strided view of the padded
  input, reshaped, does the same in one copy (a 1 × 1 convolution: no copy at all).
  Measured per layer of imaging-cls at 32 images (``F.unfold`` / strided view): the 7 × 7
  stem 603 / 273 µs, a 3 × 3 layer 418 / 194 µs, a 1 × 1 layer 69 / 9 µs.

:func:`install` therefore sends every batch size to the unfolding path and computes it for
1-D and 2-D convolutions without groups from Opacus's strided unfold
(``opacus.utils.tensor_utils.unfold2d``; a 1-D convolution is a 2-D one of height 1); other
convolutions keep torch's own code. The gradients are the same sums in another order, and
:func:`fedmed.privacy.trainer.select_grad_sample_mode` still keeps ``ew`` for a model only
where its per-example gradients match Opacus's ``hooks``. If a later torch renames what
is replaced here, nothing is replaced and ``ew`` behaves as torch makes it (``auto`` then
checks it as before).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from opacus.utils.tensor_utils import unfold2d
from torch.nn.utils._expanded_weights import conv_utils

_TARGET = "conv_unfold_weight_grad_sample"
_MARK = "_fedmed_strided_unfold"


def install() -> None:
    """Route torch's per-example conv gradients through :func:`_strided_weight_grad_sample`,
    once (a second call changes nothing)."""
    original: Callable[..., Any] | None = getattr(conv_utils, _TARGET, None)
    if original is None or not hasattr(conv_utils, "THRESHOLD") or getattr(original, _MARK, False):
        return

    @functools.wraps(original)  # keeps torch's own function as ``__wrapped__``
    def strided_or_torch(inputs: torch.Tensor, grad_output: torch.Tensor,
                         weight_shape: Sequence[int], kernel_size: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], groups: int, func: Any) -> torch.Tensor:
        if groups == 1 and func in (F.conv1d, F.conv2d):
            return _strided_weight_grad_sample(inputs, grad_output, weight_shape,
                                               kernel_size, stride, padding, dilation)
        return original(inputs, grad_output, weight_shape, kernel_size, stride, padding,
                        dilation, groups, func)

    setattr(strided_or_torch, _MARK, True)
    setattr(conv_utils, _TARGET, strided_or_torch)
    conv_utils.THRESHOLD = 0  # no batch size takes the grouped path any more


def _strided_weight_grad_sample(inputs: torch.Tensor, grad_output: torch.Tensor,
                                weight_shape: Sequence[int], kernel_size: Sequence[int],
                                stride: Sequence[int], padding: Sequence[int],
                                dilation: Sequence[int]) -> torch.Tensor:
    """Per-example weight gradients (batch, *weight_shape) of an ungrouped 1-D or 2-D
    convolution: each example's output gradient times its unfolded input."""
    if inputs.dim() == 3:  # (batch, channels, length) -> height 1
        inputs = inputs.unsqueeze(-2)
        kernel_size, stride = (1, kernel_size[0]), (1, stride[0])
        padding, dilation = (0, padding[0]), (1, dilation[0])
    # contiguous: unfold2d computes its view's strides for a dense tensor, and without
    # padding it is handed the input as it is (icd's convolution reads a transposed one)
    columns = unfold2d(inputs.contiguous(), kernel_size=tuple(kernel_size), padding=tuple(padding),
                       stride=tuple(stride), dilation=tuple(dilation))
    batch = inputs.shape[0]
    per_example = torch.bmm(grad_output.reshape(batch, -1, columns.shape[-1]),
                            columns.transpose(1, 2))
    return per_example.view(batch, *weight_shape)
