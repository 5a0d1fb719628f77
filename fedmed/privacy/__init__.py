"""Differential privacy for fedmed sites.

- :mod:`~fedmed.privacy.trainer`: DP-SGD for any task pack (Opacus ``make_private``).
- :mod:`~fedmed.privacy.accounting`: ε of a release history with Opacus's accountants.
- :mod:`~fedmed.privacy.ledger`: the site's durable record of every release.
- :mod:`~fedmed.privacy.policy`: the site's ``policy.toml`` (budget and rules).
- :mod:`~fedmed.privacy.guard`: the pre-round check that enforces the policy.
- :mod:`~fedmed.privacy.job`: the DP request a coordinator sends with each round.
- :mod:`~fedmed.privacy.client_level`: client-level DP accounting at the coordinator.
"""
