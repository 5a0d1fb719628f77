"""Client-level DP accounting at the coordinator, with Flower's accountant (``flwr[dp]``).

With ``client-dp = true`` the coordinator clips each site's whole model update to
``client-clip-norm`` and adds Gaussian noise to the average (Flower's
``DifferentialPrivacyServerSideFixedClipping``). That protects a *whole site's*
contribution — a different unit from the per-example ε each site's ledger tracks —
so both are reported side by side. This module composes the rounds with Flower's
RDP accountant (a wrapper of Google's ``dp-accounting``).

Every site takes part in every round (fraction-train 1), so sampling gives no
amplification (Flower's ``no-amplification`` model). Flower's wrapper scales its
noise for the configured number of sites; when only ``k`` of ``n`` sites contribute,
the noise relative to the k-site average's sensitivity shrinks to σ·k/n, and that
effective multiplier is what gets accounted.
"""

from __future__ import annotations

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)

from fedmed.errors import ConfigError


class ClientLevelAccountant:
    """ε of the coordinator's client-level DP releases so far."""

    def __init__(self, num_sites: int, delta: float) -> None:
        self.num_sites = num_sites
        self.delta = delta
        self.rounds = 0
        config = PrivacyConfig(
            target_delta=delta,
            population_size=num_sites,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
        try:
            self._accountant = RdpAccountant(config)
        except ImportError:
            raise ConfigError(
                "client-dp needs Flower's accountant: pip install 'flwr[dp]==1.42.*'"
            ) from None

    def record_round(self, noise_multiplier: float, num_aggregated: int) -> float:
        """Compose one noisy aggregate of ``num_aggregated`` sites; return ε so far."""
        effective = noise_multiplier * num_aggregated / self.num_sites
        self._accountant.compose(
            GaussianPrivacyEvent(
                noise_multiplier=effective,
                sample_size=num_aggregated,
                population_size=self.num_sites,
            )
        )
        self.rounds += 1
        return self.epsilon

    @property
    def epsilon(self) -> float:
        return float(self._accountant.get_epsilon(self.delta)) if self.rounds else 0.0
