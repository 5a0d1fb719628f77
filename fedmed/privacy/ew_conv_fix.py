"""Let PyTorch's expanded weights (``ew``) handle a convolution whose output gradient is a view.

Why this exists: for batches under 32 (``THRESHOLD`` in
``torch.nn.utils._expanded_weights.conv_utils``) expanded weights compute a convolution's
per-example weight gradients as one grouped convolution over the batch, and reshape the
output gradient with ``grad_output.view(...)`` first. When the convolution's output went
on into ``torch.cat`` (each layer of MONAI's DenseNet in ``imaging-cls``) or a transpose
(the CAML attention of ``icd``), that gradient is a strided slice, ``view`` raises "view
size is not compatible with input tensor's size and stride", and ``auto`` fell back to
Opacus's ``hooks`` — measured slower on exactly those packs (docs/privacy.md § DP overhead
per task pack). Torch 2.13 still has the ``view``.

:func:`install` wraps torch's function so that it receives a contiguous copy of the
gradient; the numbers are the same (a copy, not a change of values), and
:func:`fedmed.privacy.trainer.select_grad_sample_mode` still keeps ``ew`` for a model only
where its per-example gradients match ``hooks``. If a later torch renames the function,
nothing is wrapped and ``ew`` behaves as torch makes it (``auto`` then checks it as before).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch.nn.utils._expanded_weights import conv_utils

_TARGET = "conv_group_weight_grad_sample"
_MARK = "_fedmed_contiguous_grad_output"


def install() -> None:
    """Wrap torch's grouped per-example conv gradient, once (a second call changes nothing)."""
    original: Callable[..., Any] | None = getattr(conv_utils, _TARGET, None)
    if original is None or getattr(original, _MARK, False):
        return

    @functools.wraps(original)  # keeps torch's own function as ``__wrapped__``
    def with_contiguous_grad_output(inputs: Any, grad_output: Any, *rest: Any, **named: Any) -> Any:
        return original(inputs, grad_output.contiguous(), *rest, **named)

    setattr(with_contiguous_grad_output, _MARK, True)
    setattr(conv_utils, _TARGET, with_contiguous_grad_output)
