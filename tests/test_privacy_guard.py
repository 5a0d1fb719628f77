"""Property: whatever jobs arrive, a site's spent ε never exceeds its policy budget."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fedmed.privacy.guard import ReleaseRequest, check_release
from fedmed.privacy.ledger import Ledger, LedgerEntry
from fedmed.privacy.policy import Policy

release = st.tuples(
    st.floats(min_value=0.3, max_value=6.0),  # σ (some below the policy floor)
    st.floats(min_value=0.005, max_value=0.5),  # q
    st.integers(min_value=1, max_value=60),  # steps
)


@settings(max_examples=60, deadline=None)
@given(
    budget=st.floats(min_value=0.1, max_value=8.0),
    accountant=st.sampled_from(["rdp", "gdp"]),
    releases=st.lists(release, min_size=1, max_size=10),
)
def test_spent_epsilon_never_exceeds_the_budget(
    budget: float, accountant: str, releases: list[tuple[float, float, int]]
) -> None:
    policy = Policy(epsilon=budget, min_noise_multiplier=0.5, accountant=accountant)
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger.create(Path(folder) / "ledger.json", "site")
        for number, (sigma, rate, steps) in enumerate(releases, start=1):
            request = ReleaseRequest("heart", sigma, rate, steps, policy.delta, accountant)
            decision = check_release(policy, ledger, request)
            before = list(ledger.releases)
            if decision.accepted:
                ledger.append(
                    LedgerEntry("run", number, "heart", sigma, rate, steps, policy.delta,
                                accountant, decision.epsilon_after, 1.0, "data", "t")
                )
                assert decision.epsilon_after <= budget
            else:
                assert decision.reason and ledger.releases == before
            reloaded = Ledger.load(ledger.path)
            assert reloaded.spent(policy.delta, accountant) <= budget
            assert [e.epsilon_after for e in reloaded.releases] == [
                e.epsilon_after for e in ledger.releases
            ]
