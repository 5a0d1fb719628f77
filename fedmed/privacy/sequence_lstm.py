"""An LSTM whose per-example gradients Opacus computes once per sequence, not once per step.

Why this exists: ``torch.nn.LSTM`` has no per-example gradients in Opacus, and Opacus's
drop-in :class:`opacus.layers.DPLSTM` builds the recurrence from two ``Linear`` layers
applied at every time step, so both ``hooks`` and expanded weights compute a full
per-example weight gradient at each of the T steps and add it to the running sum — on
``ecg-lstm`` (31 steps) that accumulation took 60 % of a DP-SGD epoch and made DP 3× plain
SGD (docs/privacy.md § DP overhead per task pack). Writing the per-example gradient as one
product over all steps at once needs the gate gradients of every step, which only a rule
for the whole layer sees; Opacus's documented extension point,
:func:`opacus.grad_sample.register_grad_sampler`, takes such a rule.

:class:`SequenceLSTM` is one unidirectional, batch-first LSTM layer that computes exactly
what ``DPLSTM`` computes — the same operations in the same order, the same initialisation
and state-dict names (``weight_ih_l0``, ``bias_ih_l0``, ``weight_hh_l0``, ``bias_hh_l0``,
``nn.LSTM``'s), so a model built with it trains the same numbers without DP and loads the
same checkpoints. Unlike ``DPLSTM`` it returns only the output sequence (B × T × H); the last
hidden state is its last row.

The rule (:func:`sequence_lstm_grad_sample`): from the layer's input and the gradient of its
outputs, run the recurrence again and backpropagate through time by hand, batched over
examples, to get each step's gate gradient ``d_t`` (B × 4H); then example ``n``'s gradients
are ``Σ_t d_t[n] ⊗ x_t[n]`` (input weights), ``Σ_t d_t[n] ⊗ h_{t-1}[n]`` (recurrent
weights) and ``Σ_t d_t[n]`` (each bias): two einsums over the whole sequence. Tests compare
it with one backward pass per example and with ``DPLSTM`` under Opacus.
"""

from __future__ import annotations

import math

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn
from torch.nn import functional as F

GATES = 4  # input, forget, cell, output: nn.LSTM's order


class SequenceLSTM(nn.Module):
    """One batch-first LSTM layer, (B, T, input_size) → (B, T, hidden_size), zero start state."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        # Initialised exactly as DPLSTM does, so a seeded model starts from the same weights:
        # DPLSTM builds two nn.Linear layers (whose own initialisation draws from the RNG),
        # then redraws every parameter uniformly. Its state dict uses nn.LSTM's names, in
        # this order.
        ih = nn.Linear(input_size, GATES * hidden_size)
        hh = nn.Linear(hidden_size, GATES * hidden_size)
        bound = 1.0 / math.sqrt(hidden_size)
        for weight in (ih.weight, ih.bias, hh.weight, hh.bias):
            nn.init.uniform_(weight, -bound, bound)
        self.weight_ih_l0, self.bias_ih_l0 = ih.weight, ih.bias
        self.weight_hh_l0, self.bias_hh_l0 = hh.weight, hh.bias

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch = inputs.shape[0]
        h = c = inputs.new_zeros(batch, self.hidden_size)
        outputs = []
        for x in inputs.unbind(dim=1):
            gates = F.linear(x, self.weight_ih_l0, self.bias_ih_l0) + F.linear(
                h, self.weight_hh_l0, self.bias_hh_l0
            )
            i, f, g, o = torch.split(gates, self.hidden_size, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, batch_first=True"


@register_grad_sampler(SequenceLSTM)
def sequence_lstm_grad_sample(
    layer: SequenceLSTM, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Each example's gradient of every parameter of ``layer`` (see the module docstring)."""
    inputs = activations[0].to(backprops.dtype)
    batch, steps = inputs.shape[0], inputs.shape[1]
    size = layer.hidden_size
    with torch.no_grad():
        # The recurrence again, keeping what backpropagation through time needs.
        projected = F.linear(inputs, layer.weight_ih_l0, layer.bias_ih_l0 + layer.bias_hh_l0)
        h = c = inputs.new_zeros(batch, size)
        previous_h, previous_c, activated, cells = [], [], [], []
        for t in range(steps):
            previous_h.append(h)
            previous_c.append(c)
            gates = projected[:, t] + F.linear(h, layer.weight_hh_l0)
            sig = torch.sigmoid(gates)
            i, f, o = sig[:, :size], sig[:, size : 2 * size], sig[:, 3 * size :]
            g = torch.tanh(gates[:, 2 * size : 3 * size])
            c = f * c + i * g
            h = o * torch.tanh(c)
            activated.append((i, f, g, o))
            cells.append(c)
        # Backpropagation through time, all examples at once.
        gate_grads = inputs.new_empty(batch, steps, GATES * size)
        dh_next = dc_next = inputs.new_zeros(batch, size)
        for t in reversed(range(steps)):
            i, f, g, o = activated[t]
            tanh_c = torch.tanh(cells[t])
            dh = backprops[:, t] + dh_next
            dc = dh * o * (1 - tanh_c * tanh_c) + dc_next
            d = gate_grads[:, t]
            d[:, :size] = dc * g * i * (1 - i)
            d[:, size : 2 * size] = dc * previous_c[t] * f * (1 - f)
            d[:, 2 * size : 3 * size] = dc * i * (1 - g * g)
            d[:, 3 * size :] = dh * tanh_c * o * (1 - o)
            dh_next = d @ layer.weight_hh_l0
            dc_next = dc * f
        hidden = torch.stack(previous_h, dim=1)
        bias = gate_grads.sum(dim=1)
        gradients = {
            layer.weight_ih_l0: torch.einsum("btg,bti->bgi", gate_grads, inputs),
            layer.weight_hh_l0: torch.einsum("btg,bth->bgh", gate_grads, hidden),
            layer.bias_ih_l0: bias,
            layer.bias_hh_l0: bias.clone(),
        }
    return {param: grad for param, grad in gradients.items() if param.requires_grad}
