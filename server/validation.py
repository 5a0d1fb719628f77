"""Bad-update checks: what the coordinator refuses to aggregate, and why.

A site's update can break the global model by accident (a diverged optimiser gives
NaN/Inf, a different code version gives other shapes) or on purpose (a scaled
update that drags the average — model poisoning). Before aggregation every update
is compared with the global weights the coordinator sent that round:

- it must have the same number of arrays, each with the same shape, and a
  floating-point (or matching) dtype;
- every value must be finite;
- the L2 norm of the update delta ``‖update − global‖₂`` over all arrays must not
  exceed ``max_update_norm`` (when that bound is > 0). Honest DP-SGD updates are
  small and bounded (clipped per-example gradients times the learning rate and the
  steps), so the bound can be set a few times above what honest sites send.

Contract with :class:`fedmed.server.recording.RecordingStrategy`: updates that fail
are removed before the inner strategy aggregates, recorded (run-directory event
``rejected-update`` and a ``rejected-update`` entry in the coordinator's signed
audit log, naming the site and reason), and the round continues with the rest —
unless fewer than ``min-nodes`` remain.

Under SecAgg+ the coordinator never sees one site's update, only their sum, so
only the *aggregate* can be checked (:func:`check_update` on the aggregate): a bad
aggregate is dropped and the round keeps the previous global model. Per-site
influence is then bounded by SecAgg+ itself: every uploaded value is clipped to
±``clipping_range`` and each site's weight is capped at ``max_weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.common import FitRes, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one update."""

    ok: bool
    reason: str = ""
    norm: float = float("nan")


def update_norm(update: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """``‖update − reference‖₂`` over all arrays (in float64, so large models do not overflow)."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is a verdict, not a warning
        for new, old in zip(update, reference, strict=True):
            delta = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
            total += float(np.dot(delta.ravel(), delta.ravel()))
    return float(np.sqrt(total))


def check_update(
    update: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    max_update_norm: float = 0.0,
) -> Verdict:
    """Check one update against the global weights of the round (see the module docstring)."""
    if len(update) != len(reference):
        return Verdict(False, f"{len(update)} arrays, expected {len(reference)}")
    for index, (new, old) in enumerate(zip(update, reference, strict=True)):
        new, old = np.asarray(new), np.asarray(old)
        if new.shape != old.shape:
            return Verdict(False, f"array {index} has shape {new.shape}, expected {old.shape}")
        if not (np.issubdtype(new.dtype, np.number) or new.dtype == old.dtype):
            return Verdict(False, f"array {index} has dtype {new.dtype}, expected {old.dtype}")
        if np.issubdtype(new.dtype, np.inexact) and not np.isfinite(new).all():
            bad = int(np.size(new) - np.count_nonzero(np.isfinite(new)))
            return Verdict(False, f"array {index} holds {bad} NaN/Inf value(s)")
    norm = update_norm(update, reference)
    if not np.isfinite(norm):
        return Verdict(False, "update norm overflows", norm)
    if max_update_norm > 0 and norm > max_update_norm:
        return Verdict(
            False, f"update norm {norm:.4g} exceeds the bound {max_update_norm:.4g}", norm
        )
    return Verdict(True, "", norm)


@dataclass
class Screening:
    """Which replies of one round may be aggregated: the rest, with reasons, and each norm."""

    accepted: list[tuple[ClientProxy, FitRes]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (site, reason)
    norms: dict[str, float] = field(default_factory=dict)


def screen_results(
    results: Sequence[tuple[ClientProxy, FitRes]],
    reference: Sequence[np.ndarray],
    max_update_norm: float,
    site_of: Callable[[ClientProxy, FitRes], str],
) -> Screening:
    """Check every reply's update against ``reference`` (the weights sent this round)."""
    screening = Screening()
    for proxy, res in results:
        site = site_of(proxy, res)
        try:
            update = parameters_to_ndarrays(res.parameters)
        except Exception as exc:  # malformed bytes from a broken or hostile node
            screening.rejected.append((site, f"unreadable parameters ({type(exc).__name__})"))
            continue
        verdict = check_update(update, reference, max_update_norm)
        if np.isfinite(verdict.norm):
            screening.norms[site] = verdict.norm
        if verdict.ok:
            screening.accepted.append((proxy, res))
        else:
            screening.rejected.append((site, verdict.reason))
    return screening
