"""A job's DP request, as the coordinator sends it and the node reads it.

The coordinator puts these keys in every round's fit config (one place defines
them, so the two sides cannot drift); the node turns them, with its own data size,
into the exact mechanism of the round (:func:`plan_release`) and asks its policy.

``dp-epsilon`` is a per-run target: the node picks σ so that the run's planned
rounds, alone, cost that ε at ``dp-delta`` (Opacus's ``get_noise_multiplier``). The
site's ledger then composes the run with everything released before, and its
policy budget caps the total; a positive ``dp-noise-multiplier`` fixes σ instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedmed.config import FederationConfig, Scalar
from fedmed.errors import ConfigError
from fedmed.privacy.accounting import calibrate_noise, check_accountant
from fedmed.privacy.guard import ReleaseRequest
from fedmed.privacy.trainer import GRAD_SAMPLE_MODES, poisson_schedule


@dataclass(frozen=True)
class DPJob:
    """The DP settings of a run (see the module docstring).

    The federation's settings (:class:`~fedmed.config.FederationConfig`) are the one
    source: the defaults here are theirs, and :meth:`from_config` maps a run's
    settings to its job.
    """

    enabled: bool = FederationConfig.dp
    target_epsilon: float = FederationConfig.epsilon
    delta: float = FederationConfig.delta
    noise_multiplier: float = FederationConfig.noise_multiplier
    clip_norm: float = FederationConfig.clip_norm
    accountant: str = FederationConfig.accountant
    grad_sample_mode: str = FederationConfig.grad_sample_mode
    num_rounds: int = 1

    def __post_init__(self) -> None:
        check_accountant(self.accountant)
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ConfigError(
                f"grad-sample-mode {self.grad_sample_mode!r} unknown; expected one of "
                + ", ".join(GRAD_SAMPLE_MODES)
            )
        if self.enabled:
            if self.noise_multiplier < 0 or self.clip_norm <= 0:
                raise ConfigError("DP needs noise-multiplier >= 0 and clip-norm > 0")
            if self.noise_multiplier == 0 and not self.target_epsilon > 0:
                raise ConfigError(f"DP target epsilon must be > 0, got {self.target_epsilon}")
            if not 0 < self.delta < 1:
                raise ConfigError(f"DP delta must be in (0, 1), got {self.delta}")
        if self.num_rounds < 1:
            raise ConfigError(f"a run has at least one round, got {self.num_rounds}")

    @classmethod
    def from_config(cls, config: FederationConfig) -> DPJob:
        """The DP request every site receives with each round of a run of ``config``."""
        return cls(
            enabled=config.dp,
            target_epsilon=config.epsilon,
            delta=config.delta,
            noise_multiplier=config.noise_multiplier,
            clip_norm=config.clip_norm,
            accountant=config.accountant,
            grad_sample_mode=config.grad_sample_mode,
            num_rounds=config.num_server_rounds,
        )

    def to_fit_config(self) -> dict[str, Scalar]:
        return {
            "dp": self.enabled,
            "dp-epsilon": self.target_epsilon,
            "dp-delta": self.delta,
            "dp-noise-multiplier": self.noise_multiplier,
            "dp-clip-norm": self.clip_norm,
            "dp-accountant": self.accountant,
            "dp-grad-sample-mode": self.grad_sample_mode,
            "num-rounds": self.num_rounds,
        }

    @classmethod
    def from_fit_config(cls, config: Mapping[str, Scalar]) -> DPJob:
        """Parse the coordinator's keys; a config without ``dp`` is a job without DP."""
        if "dp" not in config:
            return cls(enabled=False)
        try:
            return cls(
                enabled=bool(config["dp"]),
                target_epsilon=float(config["dp-epsilon"]),
                delta=float(config["dp-delta"]),
                noise_multiplier=float(config["dp-noise-multiplier"]),
                clip_norm=float(config["dp-clip-norm"]),
                accountant=str(config["dp-accountant"]),
                grad_sample_mode=str(config["dp-grad-sample-mode"]),
                num_rounds=int(config["num-rounds"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"incomplete DP request from the coordinator ({exc})") from None


def plan_release(
    job: DPJob, task: str, dataset_size: int, batch_size: int, local_epochs: int
) -> ReleaseRequest:
    """The mechanism one round of ``job`` runs on a site with ``dataset_size`` examples."""
    sample_rate, steps_per_epoch = poisson_schedule(dataset_size, batch_size)
    steps = steps_per_epoch * local_epochs
    if not job.enabled:
        sigma = 0.0
    elif job.noise_multiplier > 0:
        sigma = job.noise_multiplier
    else:
        sigma = calibrate_noise(
            job.target_epsilon, job.delta, sample_rate, steps * job.num_rounds, job.accountant
        )
    return ReleaseRequest(
        task=task,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        delta=job.delta,
        accountant=job.accountant,
    )
