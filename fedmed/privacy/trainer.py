"""DP-SGD for any task pack: Opacus's ``make_private`` as a ``fedmed.training.loop`` loop wrapper.

:class:`DPTrainer` plugs into :func:`fedmed.training.loop.train_round` through its
``wrap`` argument, so every pack trains privately without knowing about Opacus:
Poisson sampling (sample rate q = 1 / batches per epoch), per-example clipping to
``clip_norm``, Gaussian noise σ·clip_norm on every step, flat clipping.

The engine's own accountant is used only to check that Opacus ran exactly the
planned mechanism (σ, q, steps); ε always comes from the site ledger's full history
(:mod:`fedmed.privacy.accounting`), never from an engine that started empty.

Per-example clipping comes in six modes (``GRAD_SAMPLE_MODES``): Opacus's ``hooks``,
PyTorch's expanded weights ``ew``, ``functorch``, ghost clipping ``ghost``, which clips
without storing every example's gradient (:func:`_clip_at_the_output`), and
``bookkeeping`` (:mod:`fedmed.privacy.bookkeeping`), ghost clipping in one backward pass
for models made of linear layers; ``auto`` is the rule of :func:`select_grad_sample_mode`.
``ghost`` is chosen only on request: ``bench/dp_overhead.py`` measured it slower than
``auto``'s choice on every pack (docs/privacy.md § DP overhead per task pack), so no pack
defaults to it. Every mode but ``ghost`` takes its step through
:mod:`fedmed.privacy.lean_step` (Opacus's arithmetic, its bookkeeping paid once a step).

``max_physical_batch`` caps how many examples go through the model at once without
changing the mechanism: Opacus's batch splitting (``opacus.utils.batch_memory_manager``)
cuts each Poisson-sampled logical batch into parts of at most that many, clips and sums
the parts' per-example gradients, and adds the noise and takes the step once, after the
last part — the same (σ, q, steps), the same noise draws. It is a node's memory limit
(per-example gradients take batch × parameters), set where the node runs
(docs/privacy.md § Settings).

Models are validated first: BatchNorm (or any module Opacus cannot give
per-example gradients for) is refused with the offending layer names — fedmed does
not silently swap in GroupNorm, which changes the model being trained.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.utils.batch_memory_manager import wrap_data_loader
from opacus.validators import ModuleValidator
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader, Dataset

from fedmed.errors import ConfigError
from fedmed.privacy import (
    conv_transpose_grad,  # noqa: F401 - registers its rule with Opacus
    ew_conv_fix,
    lean_step,
)
from fedmed.privacy.accounting import compact
from fedmed.privacy.bookkeeping import LinearBookkeeper, only_linear_layers
from fedmed.privacy.sequence_lstm import SequenceLSTM

GRAD_SAMPLE_MODES = ("auto", "ew", "hooks", "functorch", "ghost", "bookkeeping")

# Opacus's hooks sit on the first layer too, whose input (token ids, images, signals)
# never needs a gradient, so PyTorch warns on every backward pass that the full backward
# hook sees module outputs only. That is all Opacus reads (grad_output, with the
# activation kept by its forward hook); per-example gradients are exact, as the packs'
# tests check. Left on, the notice was 360 of the 934 lines of an ICD DP study's log.
warnings.filterwarnings(
    "ignore",
    message="Full backward hook is firing when gradients are computed with respect to module "
    "outputs",
    category=UserWarning,
)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Before any ``ew`` backward pass in this process: see the module (DenseNet, CAML under ew).
ew_conv_fix.install()


def poisson_schedule(dataset_size: int, batch_size: int) -> tuple[float, int]:
    """(sample rate q, steps per epoch) exactly as Opacus will run and account them.

    ``make_private`` turns a loader of n = ceil(size / batch) batches into Poisson
    sampling with rate 1/n and ``int(1 / (1/n))`` steps per epoch, then accounts each
    step at rate 1 / (steps per epoch). Floating point makes that n - 1 for some n
    (93, 99, ...), so the schedule is computed the same way here; the accounted rate
    is then slightly above the sampling rate, which errs on the safe side.
    """
    if dataset_size < 1 or batch_size < 1:
        raise ConfigError(f"cannot train on {dataset_size} examples in batches of {batch_size}")
    steps_per_epoch = int(1 / (1 / math.ceil(dataset_size / batch_size)))
    return 1.0 / steps_per_epoch, steps_per_epoch


def validate_model(model: nn.Module, task: str = "") -> None:
    """ConfigError naming every layer that DP-SGD cannot train (BatchNorm first of all)."""
    norms = [
        name or type(model).__name__
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    owner = f"task {task!r}: " if task else ""
    if norms:
        raise ConfigError(
            f"{owner}model uses BatchNorm ({', '.join(norms)}), which mixes examples within a "
            "batch so per-example gradients and DP-SGD are impossible; use GroupNorm or "
            "LayerNorm in the task pack"
        )
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ConfigError(f"{owner}model cannot be trained with DP-SGD: {problems[0]}")


_MODE_CACHE: dict[str, str] = {}
# Layers with a per-example rule of fedmed's own, registered with Opacus's hooks: a model
# holding one goes to ``hooks``, where the rule runs. Expanded weights would bypass it:
# SequenceLSTM under ``ew`` adds a per-example gradient at every time step again (slower:
# docs/privacy.md § DP overhead per task pack); ConvTranspose2d does not run under ``ew``.
OWN_RULES: tuple[type[nn.Module], ...] = (SequenceLSTM, nn.ConvTranspose2d)


def select_grad_sample_mode(model: nn.Module, dataset: Dataset, loss: LossFn, batch: int) -> str:
    """``bookkeeping`` for a model of linear layers where it clips as Opacus does, else
    ``ew`` where it gives this model correct per-example gradients, else ``hooks``; always
    ``hooks`` for a model with a layer of :data:`OWN_RULES`.

    Measured (``bench/dp_overhead.py``, docs/privacy.md § DP overhead per task pack):
    bookkeeping (:mod:`fedmed.privacy.bookkeeping`) is the fastest where it applies, since it
    builds no per-example gradient; PyTorch's expanded weights (``ew``) is as fast as
    Opacus's ``hooks`` or faster wherever it works, but it fails or is wrong for some
    layers, sometimes only at some batch sizes (grouped convolutions). So each candidate is
    tried on batches of several sizes — Poisson sampling makes every size occur — and kept
    only if it matches ``hooks`` (Opacus's reference) on all of them: the same per-example
    gradients (``ew``), the same clipped sums with every example clipped and with none
    (``bookkeeping``). The choice is a rule, not a timing race, so a seeded run gives the
    same numbers in every process. Cached per architecture; the global RNG is left
    untouched.
    """
    signature = repr(model)
    if signature not in _MODE_CACHE and any(isinstance(m, OWN_RULES) for m in model.modules()):
        _MODE_CACHE[signature] = "hooks"
    if signature not in _MODE_CACHE:
        size = min(batch, len(dataset))  # type: ignore[arg-type]
        sizes = sorted({size, max(1, size - 1), max(1, size // 2 + 1), 1}, reverse=True)
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Even an unshuffled DataLoader draws a seed from the global RNG: keep it inside.
            inputs, targets = next(iter(DataLoader(dataset, batch_size=size, shuffle=False)))
            batches = [(inputs[:n], targets[:n]) for n in sizes]
            references = [_per_example_gradients(model, x, y, loss, "hooks") for x, y in batches]
            _MODE_CACHE[signature] = "hooks"
            for mode in ("bookkeeping", "ew"):
                if all(reference is not None and _agrees(model, x, y, loss, mode, reference)
                       for (x, y), reference in zip(batches, references, strict=True)):
                    _MODE_CACHE[signature] = mode
                    break
    return _MODE_CACHE[signature]


def _per_example_gradients(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: LossFn, mode: str
) -> list[torch.Tensor] | None:
    """A copy of ``model``'s per-example gradients under an Opacus ``mode`` (None: it failed)."""
    clone = copy.deepcopy(model)
    try:
        wrapped = wrap_model(clone, grad_sample_mode=mode, batch_first=True, loss_reduction="mean")
        torch.manual_seed(0)  # the same dropout masks in every mode
        loss(wrapped(inputs), targets).backward()
    except Exception:  # noqa: BLE001 - a mode that cannot handle this model is ruled out
        return None
    return [p.grad_sample.detach() for p in clone.parameters() if p.requires_grad]


# Clipping norms for bookkeeping's check: every example clipped, and none.
CHECK_CLIP_NORMS = (1e-3, 1e3)


def _agrees(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: LossFn,
            mode: str, reference: list[torch.Tensor]) -> bool:
    """Whether ``mode`` computes what Opacus's hooks (``reference``) do on this batch."""
    if mode == "ew":
        grads = _per_example_gradients(model, inputs, targets, loss, "ew")
        return grads is not None and _close(grads, reference)
    if not only_linear_layers(model):
        return False
    params = [p for p in model.parameters() if p.requires_grad]
    for clip in CHECK_CLIP_NORMS:
        clone = copy.deepcopy(model)
        try:
            sums = _bookkeeping_sums(clone, inputs, targets, loss, clip)
        except ConfigError:  # e.g. a linear layer fed a sequence
            return False
        if not _close(sums, lean_step.clip_and_sum(params, reference, clip)):
            return False
    return True


def _bookkeeping_sums(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      loss: LossFn, clip: float) -> list[torch.Tensor]:
    """Bookkeeping's clipped sums of one batch through ``model`` (hooked for good)."""
    keeper = LinearBookkeeper(model)
    torch.manual_seed(0)
    loss(model(inputs), targets).backward()
    return keeper.clipped_sums([p for p in model.parameters() if p.requires_grad], clip)


def _close(found: list[torch.Tensor], expected: list[torch.Tensor]) -> bool:
    return all(torch.allclose(a, b, rtol=1e-4, atol=1e-6)
               for a, b in zip(found, expected, strict=True))


def _clip_at_the_output(
    module: GradSampleModuleFastGradientClipping, optimizer: DPOptimizerFastGradientClipping
) -> None:
    """Make the training loop's plain ``loss.backward()`` run ghost clipping's two passes.

    Opacus packs ghost clipping into the loss (``DPLossFastGradientClipping``), which needs
    every example's own loss; a pack's ``loss`` gives only the batch mean, and the loop
    that calls it is shared by every pack. The same two passes are run here one step
    later, at the model's output, which needs no per-example loss: the gradient ``g`` the
    mean loss sends to the output is, row by row, each example's gradient / batch size.
    Pass 1 backpropagates ``g`` with Opacus's hooks on, which compute each example's
    gradient norm (ghost norms for Linear and Embedding, per-example gradients for other
    layers) and so the clipping factors c_i = min(1, C / norm_i); pass 2, hooks off,
    backpropagates ``g · c · batch size``, leaving Σ c_i ∇ℓ_i — the clipped sum — in
    ``p.grad``, where the optimizer adds the noise. This relies on the loss being a mean
    of per-example terms, as every Opacus mode does.
    """

    def two_passes(outputs: torch.Tensor, grad: torch.Tensor) -> None:
        torch.autograd.backward(outputs, grad, retain_graph=True)
        optimizer.zero_grad()  # pass 1's unclipped gradient
        factors = module.get_clipping_coef().to(grad) * len(outputs)
        module.disable_hooks()
        try:
            torch.autograd.backward(outputs, grad * factors.view(-1, *[1] * (grad.dim() - 1)))
        finally:
            module.enable_hooks()

    def detach_output(_: nn.Module, __: object, outputs: object) -> torch.Tensor:
        if not isinstance(outputs, torch.Tensor):
            raise TypeError(
                f"ghost clipping needs a model that returns one tensor, not {type(outputs)}"
            )
        # The loss backpropagates to this leaf; its hook then runs both passes itself.
        anchor = outputs.detach().requires_grad_()
        anchor.register_hook(lambda grad: two_passes(outputs, grad))
        return anchor

    module.register_forward_hook(detach_output)


def _ghost_tolerates_empty_batches(optimizer: DPOptimizerFastGradientClipping) -> None:
    """Let ghost clipping's ``step()`` follow a Poisson-sampled empty batch.

    DP-SGD must still take the step — noise is added whether or not any example was
    drawn, or the absence of noise would reveal an empty draw — and
    ``fedmed.training.loop`` does so by calling ``step()`` without a forward pass. Ghost
    clipping's optimizer reads the clipped sum from ``p.grad``, which is then unset: zero.
    (The other modes' step, :mod:`fedmed.privacy.lean_step`, handles it itself.)
    """
    pre_step = optimizer.pre_step

    def pre_step_tolerating_empty(closure: Callable[[], float] | None = None) -> bool | None:
        for param in optimizer.params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        return pre_step(closure)

    optimizer.pre_step = pre_step_tolerating_empty  # type: ignore[method-assign]


@dataclass
class DPTrainer:
    """One round of DP-SGD with a fixed, pre-approved mechanism.

    Use ``trainer.wrap`` as the ``wrap`` argument of ``train_round`` and call
    :meth:`verify` afterwards: it raises if Opacus did not run exactly ``steps`` noisy
    steps at (``noise_multiplier``, ``sample_rate``) — the mechanism the ledger records.

    ``secret_seed``: where the noise and the Poisson sampling draw from. DP-SGD's
    guarantee assumes nobody who sees the update knows the noise or which examples were
    sampled; the training loop seeds the global RNG and its loader from the round's
    ``seed``, which the *coordinator* chooses, so with that randomness the coordinator
    could regenerate the noise and subtract it. A node therefore passes a seed derived
    from its own secret (``fedmed.clients.private_round``): the noise comes from a
    generator on the model's device and the sampling from a CPU generator, both seeded
    from it, reproducible at the site and unknown outside it. These are PyTorch's
    Mersenne-Twister/Philox generators, not a CSPRNG stream: Opacus's ``secure_mode``
    needs ``torchcsprng``, which has no build for this torch. ``None`` (local studies,
    tests of the trainer alone) keeps the loop's seeded randomness.

    ``max_physical_batch``: at most this many examples per forward and backward pass
    (0: the whole logical batch); see the module docstring.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    loss: LossFn
    grad_sample_mode: str = "auto"
    task: str = ""
    mode_used: str = ""
    secret_seed: int | None = None
    max_physical_batch: int = 0

    def __post_init__(self) -> None:
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"grad-sample-mode {self.grad_sample_mode!r} unknown; expected one of "
                + ", ".join(GRAD_SAMPLE_MODES)
            )
        if not (self.noise_multiplier > 0 and self.clip_norm > 0):
            raise ConfigError("DP-SGD needs a positive noise multiplier and clipping norm")
        if self.max_physical_batch < 0:
            raise ConfigError(
                f"max-physical-batch must be >= 0 (0: no limit), not {self.max_physical_batch}"
            )
        if self.max_physical_batch and self.grad_sample_mode == "ghost":
            raise ConfigError(
                "max-physical-batch cannot split ghost clipping's batches (its two backward "
                "passes need the whole batch); use grad-sample-mode auto, ew or hooks"
            )
        self._engine: PrivacyEngine | None = None

    def wrap(
        self, model: nn.Module, optimizer: Optimizer, loader: DataLoader
    ) -> tuple[nn.Module, Optimizer, DataLoader]:
        """Opacus's ``make_private`` on the loop's objects (a training ``LoopWrapper``)."""
        validate_model(model, self.task)
        rate, _ = poisson_schedule(len(loader.dataset), loader.batch_size or 1)  # type: ignore[arg-type]
        if rate != self.sample_rate:
            raise ConfigError(
                f"planned sample rate {self.sample_rate}, but this loader gives {rate}"
            )
        mode = self.grad_sample_mode
        physical = min(loader.batch_size or 1, self.max_physical_batch or math.inf)
        if mode == "auto":
            mode = select_grad_sample_mode(model, loader.dataset, self.loss, int(physical))
        self.mode_used = mode
        noise, sampling = self._secret_generators(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # secure-RNG and grad-accumulation notices
            self._engine = PrivacyEngine(accountant="rdp")
            private = self._engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.clip_norm,
                poisson_sampling=True,
                # bookkeeping keeps no per-example gradients, and ghost's optimizer reads none
                grad_sample_mode="ghost" if mode == "bookkeeping" else mode,
                noise_generator=noise,
            )
        # ghost also returns a loss wrapper (before the loader), unused: see _clip_at_the_output
        private_model, private_optimizer, private_loader = private[0], private[1], private[-1]
        if mode == "ghost":
            _clip_at_the_output(private_model, private_optimizer)
            _ghost_tolerates_empty_batches(private_optimizer)
        elif mode == "bookkeeping":
            private_model.remove_hooks()  # Opacus's norm hooks: the bookkeeper clips instead
            lean_step.install(private_optimizer, LinearBookkeeper(model).clipped_sums)
        else:
            lean_step.install(private_optimizer)
        if sampling is not None:
            private_loader.batch_sampler.generator = sampling  # type: ignore[union-attr]
        if self.max_physical_batch:
            private_loader = wrap_data_loader(data_loader=private_loader,
                                              max_batch_size=self.max_physical_batch,
                                              optimizer=private_optimizer)
        return private_model, private_optimizer, private_loader

    def _secret_generators(
        self, model: nn.Module
    ) -> tuple[torch.Generator | None, torch.Generator | None]:
        """(noise, sampling) generators seeded from ``secret_seed`` (see the class docstring)."""
        if self.secret_seed is None:
            return None, None
        device = next(model.parameters()).device
        noise = torch.Generator(device=device).manual_seed(self.secret_seed)
        sampling = torch.Generator().manual_seed((self.secret_seed + 1) % 2**63)
        return noise, sampling

    def verify(self) -> None:
        """RuntimeError unless the engine ran exactly the planned (σ, q, steps)."""
        if self._engine is None:
            raise RuntimeError("DPTrainer.verify() called before training")
        ran = compact(self._engine.accountant.history)
        planned = [(float(self.noise_multiplier), float(self.sample_rate), int(self.steps))]
        if ran != planned:
            raise RuntimeError(f"DP-SGD ran {ran}, but the approved mechanism was {planned}")
