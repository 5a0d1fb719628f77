"""The one-run audit's statistics: an empirical ε lower bound from canary guesses.

Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023,
arXiv:2305.08846). ``m`` canaries are each included in the training data independently
with probability ½; after training, an auditor guesses "in" or "out" for ``r`` of them
(abstaining on the rest) and ``v`` guesses are right. If training is (ε, δ)-DP with
respect to each canary, ``v`` cannot be much larger than a Binomial(r, e^ε / (1 + e^ε))
draw — the accuracy of ε-DP randomized response — so a large ``v`` rules out small ε.

Their main theorem for approximate DP (δ = 0 gives the pure-DP one): for every ``v``,

    P[W ≥ v] ≤ f(v) + 2·m·δ · max_{1 ≤ i ≤ v} (f(v − i) − f(v)) / i,

with ``f(u) = P[Binomial(r, q) ≥ u]``, ``q = e^ε / (1 + e^ε)`` and ``W`` the number of
correct guesses. The right-hand side is the p-value of the hypothesis "training is
(ε, δ)-DP" (:func:`p_value`). The lower bound at confidence 1 − β is the largest ε the
observed ``v`` rejects at level β (:func:`epsilon_lower_bound`): it increases with ε, so a
bisection finds it. δ is the one the accountant reports for the run, so the bound is
compared with the accounted ε at the same δ.

The guesses may depend on anything but the coin flips: the canaries' scores under the
trained model decide them. The audit tries a few guessing plans (:func:`guess_plans`: the
scores split into two groups two ways, and the top and bottom few) and pays for choosing the best
with a union bound: each is tested at β / (number tried), so the reported maximum still
holds at confidence 1 − β.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

CONFIDENCE = 0.95
# Guesses made besides the two-group split (half "in" for the highest scores, half "out"
# for the lowest), as fractions of the canaries: few confident guesses win when separation
# is weak.
GUESS_FRACTIONS = (0.25, 0.5)
_BISECTION_STEPS = 50


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses on ``m`` canaries are right] if training is (ε, δ)-DP
    (the module docstring's bound, capped at 1)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))  # f(v) = P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # f(v - i) - f(v) = P[v - i <= Binomial(r, q) < v], accumulated over i.
    between = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
    slope = float(np.max(between / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * slope, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, delta: float = 0.0, confidence: float = CONFIDENCE
) -> float:
    """The largest ε that ``v`` right guesses out of ``r`` (``m`` canaries) reject at
    ``confidence``: training is not (ε', δ)-DP for any ε' below it, with probability at
    least ``confidence`` over the canaries' coin flips. 0 when nothing is rejected."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    beta = 1 - confidence
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, 2 * high
        if high > 1e3:  # every guess right with very many canaries: bounded by precision
            return low
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class CanaryAudit:
    """The best bound over the guess counts tried, and the guesses that gave it."""

    epsilon_lower_bound: float
    canaries: int  # m
    guesses: int  # r: "in" guesses + "out" guesses
    correct: int  # v
    confidence: float
    plans_tried: int


def guesses_right(
    scores: np.ndarray, included: np.ndarray, guesses_in: int, guesses_out: int
) -> int:
    """How many of the ``guesses_in`` highest-scoring canaries were included, plus how many
    of the ``guesses_out`` lowest were not (ties broken by position, which says nothing)."""
    order = np.argsort(scores, kind="stable")
    inside = included[order]
    return int(inside[len(order) - guesses_in :].sum() + (~inside[:guesses_out]).sum())


def two_groups(scores: np.ndarray) -> int:
    """How many of the highest ``scores`` form the upper of two groups: the split that
    maximises the between-group variance (Otsu's threshold, in one dimension). It looks at
    the scores only, never at the coin flips, so guessing by it is a fair guess."""
    ordered = np.sort(scores)
    m = len(ordered)
    sizes = np.arange(1, m)  # the lower group's size at each split
    prefix = np.cumsum(ordered)[:-1]
    lower_mean = prefix / sizes
    upper_mean = (ordered.sum() - prefix) / (m - sizes)
    spread = sizes * (m - sizes) * (upper_mean - lower_mean) ** 2
    return int(m - sizes[int(np.argmax(spread))])


def above_mirror(scores: np.ndarray) -> int:
    """How many ``scores`` exceed the largest magnitude of a negative one. A canary left out
    of training scores around 0 either way (its model moved for other reasons), so the
    negative scores show how far chance alone reaches; a canary trained on scores above.
    Like :func:`two_groups` it reads the scores only."""
    reach = max(0.0, -float(scores.min()))
    return int((scores > reach).sum())


def guess_plans(scores: np.ndarray, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """The (in, out) guess counts tried: every canary split into two groups, by
    :func:`two_groups` and by :func:`above_mirror`, and the top and bottom k for each 2k of
    ``fractions`` × m."""
    m = len(scores)
    plans = {(upper, m - upper) for upper in (two_groups(scores), above_mirror(scores))}
    for fraction in fractions:
        k = max(1, min(m // 2, round(fraction * m / 2)))
        plans.add((k, k))
    return sorted(plans)


def audit_bound(
    scores: Sequence[float],
    included: Sequence[bool],
    delta: float,
    confidence: float = CONFIDENCE,
    fractions: Sequence[float] = GUESS_FRACTIONS,
) -> CanaryAudit:
    """The one-run lower bound of canaries scored ``scores`` (higher: more likely trained
    on) whose coin flips were ``included``: for each plan of :func:`guess_plans`, guess "in"
    for the top and "out" for the bottom, union-bounded over the plans (module docstring)."""
    values = np.asarray(scores, dtype=np.float64)
    flips = np.asarray(included, dtype=bool)
    m = len(values)
    if m != len(flips) or m < 2:
        raise ValueError(f"need two or more canaries with one flip each, got {m}, {len(flips)}")
    plans = guess_plans(values, fractions)
    level = 1 - (1 - confidence) / len(plans)
    audits = []
    for guesses_in, guesses_out in plans:
        v = guesses_right(values, flips, guesses_in, guesses_out)
        r = guesses_in + guesses_out
        audits.append(
            CanaryAudit(epsilon_lower_bound(m, r, v, delta, level), m, r, v, confidence, len(plans))
        )
    # The highest bound; where every plan proves nothing, the plan closest to it (the
    # largest share of right guesses), so the counts reported say how near it came.
    return max(audits, key=lambda a: (a.epsilon_lower_bound, a.correct / max(a.guesses, 1)))
