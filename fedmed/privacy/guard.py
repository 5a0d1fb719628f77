"""The check a site runs before every round: may this release happen?

Pure functions of (policy, ledger, request), with no training and no Flower, so the
rule "spent ε never exceeds the budget" can be tested directly on random histories.
The node calls :func:`check_release` before it trains; only an accepted decision
lets training start, and the decision's ``epsilon_after`` is what the ledger records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedmed.errors import PrivacyRefusal
from fedmed.privacy.accounting import epsilon_of
from fedmed.privacy.ledger import Ledger
from fedmed.privacy.policy import Policy


@dataclass(frozen=True)
class ReleaseRequest:
    """The mechanism one round would run on the site's data.

    ``noise_multiplier`` 0 means no DP (the job has DP off); ``delta`` is the δ the job
    calibrated its noise for, which must not be weaker than the site's.
    """

    task: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str


@dataclass(frozen=True)
class Decision:
    """``accepted`` with the projected ε, or refused with a reason a person can read."""

    accepted: bool
    reason: str
    epsilon_before: float
    epsilon_after: float


def check_release(policy: Policy, ledger: Ledger, request: ReleaseRequest) -> Decision:
    """Accept ``request`` only if it obeys ``policy`` and keeps ε within the budget.

    ε is projected by composing the request onto the ledger's full history with the
    policy's accountant at the policy's δ — the same computation the ledger records
    after the round, so an accepted release can never land above the budget.
    """
    before = ledger.spent(policy.delta, policy.accountant)

    def refuse(reason: str) -> Decision:
        return Decision(False, reason, before, before)

    if not policy.allows_task(request.task):
        return refuse(
            f"task {request.task!r} is not allowed by the site policy "
            f"(allowed: {', '.join(policy.allowed_tasks)})"
        )
    if request.accountant != policy.accountant:
        return refuse(
            f"job asks for the {request.accountant} accountant; the site policy accounts "
            f"with {policy.accountant}"
        )
    if request.delta > policy.delta:
        return refuse(f"job delta {request.delta:g} is weaker than the site's {policy.delta:g}")
    if request.noise_multiplier <= 0 and math.isfinite(policy.epsilon):
        return refuse("job trains without differential privacy; the site has a finite budget")
    if 0 < request.noise_multiplier < policy.min_noise_multiplier:
        return refuse(
            f"noise multiplier {request.noise_multiplier:.3f} is below the site minimum "
            f"{policy.min_noise_multiplier:g}"
        )
    if not (request.steps >= 1 and 0.0 < request.sample_rate <= 1.0):
        return refuse(f"impossible mechanism: {request.steps} steps at rate {request.sample_rate}")
    if math.isinf(before) and math.isfinite(policy.epsilon):
        return refuse("the ledger holds a release without DP noise: epsilon is unbounded")
    history = [*ledger.history(), (request.noise_multiplier, request.sample_rate, request.steps)]
    try:
        after = epsilon_of(history, policy.delta, policy.accountant)
    except PrivacyRefusal as exc:  # e.g. gdp cannot compose this request with the ledger
        return refuse(str(exc))
    if after > policy.epsilon:
        return Decision(
            False,
            f"privacy budget: epsilon would reach {after:.3f} > budget {policy.epsilon:g} "
            f"(spent {before:.3f}, delta {policy.delta:g})",
            before,
            after,
        )
    return Decision(True, "", before, after)
