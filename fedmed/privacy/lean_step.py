"""Opacus's DP-SGD step (clip, sum, noise, scale) with its Python bookkeeping paid once a step.

Opacus's ``DPOptimizer.pre_step`` rebuilds the list of per-example gradients four times a
step (``grad_samples`` is a property over every parameter, read twice by ``pre_step`` and
twice by ``clip_and_accumulate``), recomputes the parameter list for each phase, and casts
each gradient and clipping factor even where dtype and device already match. On the packs'
large models that is noise; on the tabular packs, whose whole plain step is about 0.3 ms
(heart: one linear layer), it was about a fifth of the DP-SGD step (profiled:
docs/privacy.md § DP overhead per task pack). :func:`install` replaces ``pre_step`` with
the same arithmetic — the same tensor operations in the same order, the same noise draws
from the same generator — done from one list built once, so training is bit-identical to
Opacus's (``tests/test_lean_step.py``). Opacus's per-tensor "already processed" flags are
not kept: the training loop clears every per-example gradient before each backward pass
(``zero_grad``), the double use they guard against.

Two things Opacus's own step does not do are folded in, since both ran as wrappers of it:

- A Poisson-sampled empty batch: DP-SGD must still take the step — the noise is added
  whether or not any example was drawn, or its absence would reveal the empty draw — and
  ``fedmed.training.loop`` calls ``step()`` without a forward pass, so there are no
  per-example gradients; they are taken as an empty batch, clipping sums nothing and the
  step is pure noise.
- The scaling divisor (expected batch × accumulated parts) is computed once, not once a
  parameter: Opacus's ``accumulated_iterations`` loops over every parameter.

Ghost clipping's optimizer has a step of its own and is not replaced
(``fedmed.privacy.trainer``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.optimizers import DPOptimizer

# Opacus's own guard against dividing by a zero norm (opacus/optimizers/optimizer.py).
NORM_EPSILON = 1e-6


# (parameters, clipping norm C) -> each parameter's Σ_i min(1, C / ‖∇ℓ_i‖) ∇ℓ_i this batch
ClippedSums = Callable[[list[torch.Tensor], float], list[torch.Tensor]]


def install(optimizer: DPOptimizer, clipped_sums: ClippedSums | None = None) -> None:
    """Replace ``optimizer.pre_step`` by :func:`lean_pre_step`; the clipped sums come from
    the per-example gradients Opacus's modules store, unless ``clipped_sums`` gives them
    (``fedmed.privacy.bookkeeping``). Opacus's ``secure_mode`` (noise drawn four times from a
    CSPRNG) is not reproduced, so an optimizer in it is refused; fedmed never sets it
    (``fedmed.privacy.trainer.DPTrainer``: no CSPRNG build for this torch)."""
    if optimizer.secure_mode:
        raise ValueError("the lean DP step does not implement Opacus's secure_mode")
    source = clipped_sums or _per_example_clipping(optimizer)

    def pre_step(closure: Callable[[], float] | None = None) -> bool:
        return lean_pre_step(optimizer, source)

    optimizer.pre_step = pre_step  # type: ignore[method-assign]


def lean_pre_step(optimizer: DPOptimizer, clipped_sums: ClippedSums) -> bool:
    """Clip, sum, noise and scale as Opacus's ``pre_step`` does; False after a part of a
    split batch (``max-physical-batch``), whose step comes with the last part."""
    params = optimizer.params
    if not params:
        return True
    for param, grad in zip(params, clipped_sums(params, optimizer.max_grad_norm), strict=True):
        if param.summed_grad is not None:
            param.summed_grad += grad
        else:
            param.summed_grad = grad
    if optimizer._check_skip_next_step():
        optimizer._is_last_step_skipped = True
        return False
    std = optimizer.noise_multiplier * optimizer.max_grad_norm
    for param in params:
        summed = param.summed_grad
        noise = torch.normal(mean=0, std=std, size=summed.shape, device=summed.device,
                             generator=optimizer.generator, dtype=summed.dtype)
        param.grad = (summed + noise).view_as(param)
    if optimizer.loss_reduction == "mean":
        divisor = optimizer.expected_batch_size * optimizer.accumulated_iterations
        for param in params:
            param.grad /= divisor
    if optimizer.step_hook:
        optimizer.step_hook(optimizer)
    optimizer._is_last_step_skipped = False
    return True


def _per_example_clipping(optimizer: DPOptimizer) -> ClippedSums:
    """Opacus's clipping: from each parameter's stored per-example gradients."""

    def clipped_sums(params: list[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
        samples = [_per_example_gradients(optimizer, param) for param in params]
        return clip_and_sum(params, samples, max_grad_norm)

    return clipped_sums


def clip_and_sum(params: list[torch.Tensor], samples: list[torch.Tensor],
                 max_grad_norm: float) -> list[torch.Tensor]:
    """Each parameter's Σ_i c_i ∇ℓ_i from its per-example gradients ``samples``."""
    factors = _clipping_factors(samples, max_grad_norm)
    return [torch.einsum("i,i...", factors.to(param.dtype), sample.to(param.dtype))
            for param, sample in zip(params, samples, strict=True)]


def _per_example_gradients(optimizer: DPOptimizer, param: torch.Tensor) -> torch.Tensor:
    """The parameter's per-example gradients as one tensor; an empty batch after a
    Poisson-sampled empty draw (no backward pass ran)."""
    if getattr(param, "grad_sample", None) is None:
        param.grad_sample = param.new_zeros((0, *param.shape))
    return optimizer._get_flat_grad_sample(param)


def _clipping_factors(samples: list[torch.Tensor], max_grad_norm: float) -> torch.Tensor:
    """min(1, C / ‖g_i‖) for every example i, its norm taken over all parameters."""
    first = samples[0]
    if len(first) == 0:
        return torch.zeros((0,), device=first.device)
    norms = [sample.reshape(len(sample), -1).norm(2, dim=-1) for sample in samples]
    norms = [norm.to(norms[0].device) for norm in norms]
    per_example = torch.stack(norms, dim=1).norm(2, dim=1)
    return (max_grad_norm / (per_example + NORM_EPSILON)).clamp(max=1.0)
