"""ε from a history of DP-SGD releases, computed by Opacus's accountants.

A site's privacy loss is a property of everything it has ever released, not of one
training run. Opacus's accountants keep that as ``history``: a list of
``(noise_multiplier, sample_rate, steps)`` triples, one per stretch of identical
steps. fedmed never trusts the history of a live ``PrivacyEngine`` (a new engine
starts empty and forgets earlier rounds and runs); instead every ε is computed by a
fresh Opacus accountant whose ``history`` is set to the site ledger's full record.

Accountants (Opacus's registry names):

- ``rdp`` (default): Rényi DP (Mironov 2017), a guaranteed upper bound; composes any
  heterogeneous history.
- ``prv``: privacy-loss random variables (Gopi et al. 2021): tighter; Opacus returns
  the upper end of its error interval, so still a bound; slower on long histories.
- ``gdp``: Gaussian DP via the central limit theorem (Dong et al. 2019): an
  approximation, not a bound, and Opacus's version only reads one (σ, q) pair, so
  fedmed accepts it only while every release used the same σ and q.

A release without noise (σ = 0) has unbounded ε: any history containing one is ∞.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from fedmed.errors import ConfigError, PrivacyRefusal

ACCOUNTANTS = ("rdp", "prv", "gdp")
History = Sequence[tuple[float, float, int]]


def check_accountant(name: str) -> str:
    """``name`` if it is a supported accountant, else ConfigError listing the choices."""
    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {name!r}; expected one of {', '.join(ACCOUNTANTS)}")
    return name


def compact(history: History) -> list[tuple[float, float, int]]:
    """Merge neighbouring entries with equal (σ, q): the form Opacus's accountants keep."""
    merged: list[tuple[float, float, int]] = []
    for sigma, rate, steps in history:
        if steps <= 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(rate), int(steps)))
    return merged


def epsilon_of(history: History, delta: float, accountant: str) -> float:
    """ε after every release in ``history`` at ``delta``, by Opacus's ``accountant``.

    ``inf`` if any release had no noise. PrivacyRefusal if ``gdp`` is asked to compose
    releases with different (σ, q), which its Opacus implementation cannot do.
    """
    check_accountant(accountant)
    return _epsilon(tuple(compact(history)), float(delta), accountant)


@lru_cache(maxsize=1024)
def _epsilon(entries: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    """Cached: each round's "before" is the previous round's "after", and RDP terms are slow."""
    if not entries:
        return 0.0
    if any(sigma <= 0.0 for sigma, _, _ in entries):
        return math.inf
    if accountant == "gdp":
        if len({(sigma, rate) for sigma, rate, _ in entries}) > 1:
            raise PrivacyRefusal(
                "the gdp accountant cannot compose releases with different noise multipliers "
                "or sample rates; the site policy must use rdp or prv"
            )
        entries = ((entries[0][0], entries[0][1], sum(steps for _, _, steps in entries)),)
    with warnings.catch_warnings():
        # "optimal order is the largest alpha": the bound stays valid, only looser; fedmed
        # keeps Opacus's default orders so anyone can recompute ε with stock Opacus. (And
        # gdp's "experimental" notice, which the module docstring and docs/privacy.md carry.)
        warnings.simplefilter("ignore", UserWarning)
        if accountant == "rdp":
            return _rdp_epsilon(entries, delta)
        engine = create_accountant(mechanism=accountant)
        engine.history = list(entries)
        return float(engine.get_epsilon(delta=delta))


def _rdp_epsilon(entries: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus's ``RDPAccountant.get_epsilon`` for this history, term by term, with a cache.

    The same Opacus functions in the same order (``compute_rdp`` per entry, summed, then
    ``get_privacy_spent`` over ``RDPAccountant.DEFAULT_ALPHAS``), so the result is
    bit-identical; but a history entry's RDP curve is steps × the curve of one step, and
    that one-step curve (the slow part, ~0.1 s) is cached per (σ, q) — a long ledger with
    many runs would otherwise recompute every earlier run before every round.
    """
    rdp = sum([_one_step_rdp(rate, sigma) * steps for sigma, rate, steps in entries])
    epsilon, _ = rdp_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(epsilon)


@lru_cache(maxsize=4096)
def _one_step_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    curve = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
        orders=RDPAccountant.DEFAULT_ALPHAS,
    )
    curve.setflags(write=False)
    return curve


@lru_cache(maxsize=256)
def calibrate_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> float:
    """The smallest σ (to Opacus's tolerance) whose ``steps`` releases at rate q cost ≤ ε.

    Opacus's ``get_noise_multiplier`` does the search; its answer is verified with the
    same accountant so a σ that would overshoot is never returned.
    """
    check_accountant(accountant)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError(f"target epsilon must be a positive number, got {target_epsilon}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # see epsilon_of
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                )
            )
    except ValueError as exc:
        raise ConfigError(
            f"cannot reach epsilon {target_epsilon} at delta {delta}: {exc}"
        ) from None
    if epsilon_of([(sigma, sample_rate, steps)], delta, accountant) > target_epsilon:
        raise ConfigError(f"noise calibration overshot epsilon {target_epsilon}")
    return sigma
