"""One round at a hospital node, under its privacy policy: check, train, record — or refuse.

The order is the guarantee:

1. Under the site home's lock, open the audit log (verified), the policy and the
   ledger. Any of them missing, unreadable or tampered with → refuse.
2. Turn the job's DP request and the site's data size into the exact mechanism
   (σ, q, steps) and ask :func:`fedmed.privacy.guard.check_release`: ε after the
   round is projected over the site's whole ledger. Over budget, or against the
   policy (task, σ floor, δ, accountant, no DP) → refuse. BatchNorm models are
   refused here too, before any data is touched.
3. Train with :class:`~fedmed.privacy.trainer.DPTrainer`; check that Opacus ran
   exactly the approved mechanism.
4. Record the release in the ledger (durable) and sign it into the audit log —
   only then does the update leave the node.

A refusal is an answer, not a failure: the node returns the weights it received,
``num_examples = 0`` and ``refused = 1`` with a ``reason``, and signs a ``refusal``
entry into its own log. The coordinator drops such replies before aggregating.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fedmed.audit import AuditError, AuditLog
from fedmed.audit.provenance import code_version, config_hash
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.errors import ConfigError, PrivacyRefusal
from fedmed.privacy.guard import Decision, ReleaseRequest, check_release
from fedmed.privacy.job import DPJob, plan_release
from fedmed.privacy.ledger import Ledger, LedgerEntry
from fedmed.privacy.policy import Policy
from fedmed.privacy.trainer import DPTrainer, validate_model
from fedmed.training.local_norms import LocalNorms, norm_positions
from fedmed.training.loop import TrainSettings

Scalar = bool | int | float | str
REFUSED = "refused"
REASON = "reason"


@dataclass(frozen=True)
class RoundJob:
    """What the coordinator asked this site to do in one round."""

    run: str
    round: int
    settings: TrainSettings
    dp: DPJob
    local_norm: bool = False  # keep normalisation layers local (fedmed.training.local_norms)


@dataclass(frozen=True)
class RoundOutcome:
    """The reply to send: new weights (accepted) or the received ones (refused)."""

    weights: list[np.ndarray]
    num_examples: int
    metrics: dict[str, Scalar]

    @property
    def refused(self) -> bool:
        return bool(self.metrics.get(REFUSED))


def run_private_round(
    site: HospitalSite, home_root: Path, weights: Sequence[np.ndarray], job: RoundJob
) -> RoundOutcome:
    """Check, train, record — or refuse (see the module docstring)."""
    received = [np.asarray(w) for w in weights]
    try:
        home = SiteHome.open(home_root, site.name, site.pack.name)
        with home.lock():
            audit = home.audit()
            return _checked_round(site, home, audit, received, job)
    except (AuditError, PrivacyRefusal, OSError) as exc:  # nothing to sign with, or no home
        return refusal(site, received, f"site home unusable: {exc}", {})


@dataclass(frozen=True)
class _Approval:
    """Everything an accepted round needs: the rules, the record, the mechanism, the ε."""

    policy: Policy
    ledger: Ledger
    request: ReleaseRequest
    decision: Decision


def _decide(site: HospitalSite, home: SiteHome, job: RoundJob) -> _Approval | str:
    """The approval of this round, or the reason to refuse it (fail closed on any doubt)."""
    task = site.pack.name
    try:
        policy = home.policy()
        ledger = home.ledger()
        request = plan_release(
            job.dp, task, len(site.data.train), job.settings.batch_size, job.settings.local_epochs
        )
        if request.noise_multiplier > 0:
            validate_model(site.pack.build_model(), task)
        decision = check_release(policy, ledger, request)
    except (PrivacyRefusal, ConfigError) as exc:
        return str(exc)
    if not decision.accepted:
        return decision.reason
    return _Approval(policy, ledger, request, decision)


def _checked_round(
    site: HospitalSite, home: SiteHome, audit: AuditLog, weights: list[np.ndarray], job: RoundJob
) -> RoundOutcome:
    task = site.pack.name
    approval = _decide(site, home, job)
    if isinstance(approval, str):
        audit.append(
            "refusal", {"run": job.run, "round": job.round, "task": task, "reason": approval}
        )
        return refusal(site, weights, approval, _spent(home))
    policy, request, decision = approval.policy, approval.request, approval.decision
    trainer = _trainer(site, request, job.dp)
    local_norms = LocalNorms.of(home.root, job.run) if job.local_norm else None
    start = local_norms.apply(weights) if local_norms else weights
    new_weights, result = site.train(start, job.settings, wrap=trainer.wrap if trainer else None)
    if trainer is not None:
        trainer.verify()
    if result.steps != request.steps:
        raise RuntimeError(f"trained {result.steps} steps, {request.steps} were approved")
    entry = LedgerEntry(
        run=job.run,
        round=job.round,
        task=task,
        noise_multiplier=request.noise_multiplier,
        sample_rate=request.sample_rate,
        steps=request.steps,
        delta=policy.delta,
        accountant=policy.accountant,
        epsilon_after=decision.epsilon_after,
        clip_norm=job.dp.clip_norm if trainer else 0.0,
        dataset=site.data.fingerprint,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    approval.ledger.append(entry)  # durable before the update can leave
    if local_norms is not None:
        local_norms.save(new_weights, norm_positions(site.pack.build_model()))
    audit.append(
        "round-participation",
        {"run": job.run, "round": job.round, "task": task, "decision": "joined"},
    )
    head = audit.append(
        "dp-release",
        {
            **entry.to_json(),
            "mechanism": "dp-sgd (Opacus, Poisson sampling, flat clipping)" if trainer else "none",
            "grad_sample_mode": trainer.mode_used if trainer else "",
            "epsilon_budget": policy.epsilon,
            "job": config_hash(asdict(job.dp)),
            "code": code_version(),
        },
    )
    metrics: dict[str, Scalar] = {
        "site": site.name,
        REFUSED: 0,
        "train-loss": result.mean_loss,
        "steps": result.steps,
        "device": site.device.type,  # cpu or cuda: operators see where each site trained
        **_privacy_metrics(decision.epsilon_after, policy),
        "noise-multiplier": request.noise_multiplier,
        "sample-rate": request.sample_rate,
        "clip-norm": entry.clip_norm,
        "audit-key": head.key,
        "audit-seq": head.seq,
        "audit-hash": head.hash,
    }
    return RoundOutcome(new_weights, result.num_examples, metrics)


def _trainer(site: HospitalSite, request: ReleaseRequest, dp: DPJob) -> DPTrainer | None:
    if request.noise_multiplier <= 0:
        return None
    return DPTrainer(
        noise_multiplier=request.noise_multiplier,
        sample_rate=request.sample_rate,
        steps=request.steps,
        clip_norm=dp.clip_norm,
        loss=site.pack.loss,
        grad_sample_mode=dp.grad_sample_mode,
        task=site.pack.name,
    )


def _privacy_metrics(epsilon: float, policy: Policy) -> dict[str, Scalar]:
    return {
        "epsilon": epsilon,
        "delta": policy.delta,
        "epsilon-budget": policy.epsilon,
        "accountant": policy.accountant,
    }


def _spent(home: SiteHome) -> dict[str, Scalar]:
    """The site's ε so far for a refusal reply, if its policy and ledger can be read."""
    try:
        policy = home.policy()
        return _privacy_metrics(home.ledger().spent(policy.delta, policy.accountant), policy)
    except PrivacyRefusal:
        return {}


def refusal(
    site: HospitalSite, weights: list[np.ndarray], reason: str, extra: dict[str, Scalar]
) -> RoundOutcome:
    """The reply of a refused round: the received weights, no examples, and why."""
    metrics: dict[str, Scalar] = {"site": site.name, REFUSED: 1, REASON: reason, **extra}
    return RoundOutcome(weights, 0, metrics)
