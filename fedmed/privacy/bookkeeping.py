"""Per-example clipping for models made only of linear layers, in the one backward pass.

For a linear layer fed a (batch, features) input, example i's weight gradient is the outer
product g_i a_iᵀ of its output gradient g_i and its input a_i, so its norm is ‖g_i‖·‖a_i‖
and the clipped sum Σ c_i g_i a_iᵀ is one matrix product (c ⊙ G)ᵀ A. Neither needs a
per-example gradient. Keeping A and G from the ordinary forward and backward pass and
computing both after it is the "book-keeping" form of ghost clipping (Bu et al., 2023,
"Differentially private optimization on large model at small cost"): Opacus's ``ghost``
mode takes the same norms but runs a second backward pass for the clipped sum, and its
``hooks`` and expanded-weights modes build every example's gradient; on the tabular packs
(one linear layer, a plain step of about 0.3 ms) that machinery, not the arithmetic, was
most of DP-SGD's cost (docs/privacy.md § DP overhead per task pack). Opacus has no such
mode, hence this module.

:class:`LinearBookkeeper` records each layer's input and output gradient with a forward hook
and a tensor hook and hands the clipped sums to the DP step of
:mod:`fedmed.privacy.lean_step`, which adds the noise: the same noise draws, scaling and
accounting as every other mode. The arithmetic
follows Opacus's: per-example gradients of a mean loss are the output gradients × batch
size, factors min(1, C / (‖g_i‖ + 1e-6)) over all layers' norms.

Refused (ConfigError) where it would be wrong: a trainable parameter outside a linear
layer, a linear layer fed anything but (batch, features), a layer used twice in one
forward pass. ``auto`` picks it only for a model whose trainable layers are all linear
and whose clipped sums it reproduces (``fedmed.privacy.trainer.select_grad_sample_mode``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedmed.errors import ConfigError
from fedmed.privacy.lean_step import NORM_EPSILON

MARKER = "_fedmed_bookkeeping"  # set on a model once its layers carry the hooks
ForwardHook = Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]


def only_linear_layers(model: nn.Module) -> bool:
    """Whether every trainable parameter is the weight or bias of an ``nn.Linear``."""
    linear = {id(p) for m in model.modules() if isinstance(m, nn.Linear)
              for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    return bool(trainable) and all(id(p) in linear for p in trainable)


class LinearBookkeeper:
    """Each linear layer's last input and output gradient, and the clipped sum from them."""

    def __init__(self, model: nn.Module) -> None:
        if not only_linear_layers(model):
            raise ConfigError(
                "grad-sample-mode bookkeeping needs a model whose trainable parameters all "
                "belong to nn.Linear layers; use auto, ew or hooks"
            )
        if getattr(model, MARKER, False):
            raise ConfigError("this model already has bookkeeping hooks; wrap a fresh model")
        setattr(model, MARKER, True)
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)
                       and any(p.requires_grad for p in m.parameters(recurse=False))]
        self.inputs: dict[int, torch.Tensor] = {}
        self.output_grads: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            layer.register_forward_hook(self._recorder(index))

    def _recorder(self, index: int) -> ForwardHook:
        """The forward hook of linear layer ``index``: keeps its input and, once the backward
        pass reaches it, its output gradient."""

        def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...],
                   output: torch.Tensor) -> None:
            if not (layer.training and torch.is_grad_enabled()):
                return  # evaluation: nothing to clip
            features = inputs[0]
            if features.dim() != 2:
                raise ConfigError(
                    f"grad-sample-mode bookkeeping: linear layer {index} received an input of "
                    f"shape {tuple(features.shape)}; it handles (batch, features) inputs only"
                )
            if index in self.inputs:
                raise ConfigError(
                    f"grad-sample-mode bookkeeping: linear layer {index} ran twice in one "
                    "forward pass; its examples' gradients are not single outer products"
                )
            self.inputs[index] = features.detach()
            output.register_hook(lambda grad: self.output_grads.__setitem__(index, grad))
        return record

    def clipped_sums(self, params: list[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
        """Σ_i c_i ∇ℓ_i over the recorded batch for each of ``params`` (zeros after an empty
        Poisson draw), and forget the batch."""
        records = [(layer, self.inputs.get(i), self.output_grads.get(i))
                   for i, layer in enumerate(self.layers)]
        self.inputs.clear()
        self.output_grads.clear()
        missing = [i for i, (_, features, grads) in enumerate(records)
                   if features is None or grads is None]
        if len(missing) == len(records):  # an empty Poisson draw: no forward pass, sum nothing
            return [torch.zeros_like(param) for param in params]
        if missing:
            raise ConfigError(
                f"grad-sample-mode bookkeeping: linear layers {missing} took no part in the "
                "loss of this batch; their examples' gradients are unknown"
            )
        # The loss is a batch mean: each example's own gradient is the output gradient × n.
        scaled = [(layer, features, grads * len(grads)) for layer, features, grads in records]
        squared = sum(_squared_norms(layer, features, grads) for layer, features, grads in scaled)
        factors = (max_grad_norm / (squared.sqrt() + NORM_EPSILON)).clamp(max=1.0)
        sums: dict[int, torch.Tensor] = {}
        for layer, features, grads in scaled:
            clipped = grads * factors.unsqueeze(1)
            sums[id(layer.weight)] = clipped.t() @ features
            if layer.bias is not None:
                sums[id(layer.bias)] = clipped.sum(0)
        return [sums[id(param)] for param in params]


def _squared_norms(layer: nn.Linear, features: torch.Tensor,
                   grads: torch.Tensor) -> torch.Tensor:
    """Each example's squared gradient norm over the layer's trainable parameters."""
    grad_norms = grads.pow(2).sum(1)
    squared = torch.zeros_like(grad_norms)
    if layer.weight.requires_grad:
        squared = squared + grad_norms * features.pow(2).sum(1)
    if layer.bias is not None and layer.bias.requires_grad:
        squared = squared + grad_norms
    return squared
