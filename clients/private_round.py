"""One round at a hospital node, under its privacy policy: check, train, record — or refuse.

The order is the guarantee:

0. A site home is never silently started over. When the coordinator witnessed a head
   of this site's audit log (``job.witnessed``, from the fit config's
   ``witnessed-heads``), the log must still hold it: same hash at that ``seq``. A home
   that is missing (created here only to sign the refusal), empty, shorter, or holds
   another entry at that seq was deleted, reset or restored from an older copy → refuse
   every round, nothing trained, nothing in the ledger, until it is restored from a
   backup that holds the witnessed head (``witness_gap``).
1. Under the site home's lock, open the audit log (verified), the policy and the
   ledger. Any of them missing, unreadable or tampered with → refuse. The signed log
   is the source of truth: a ``policy.toml`` whose SHA-256 differs from the last one
   signed is signed as a ``policy-change`` entry (digest, ε and δ budget) before it
   is used, and the ledger's releases must be exactly the signed ``dp-release``
   entries (:func:`fedmed.privacy.ledger.ledger_disagreement`) — a ledger edited or
   reset by hand → refuse, so ε is never lower than what the signed log proves.
2. Turn the job's DP request and the site's data size into the exact mechanism
   (σ, q, steps) and ask :func:`fedmed.privacy.guard.check_release`: ε after the
   round is projected over the site's whole ledger. Over budget, or against the
   policy (task, σ floor, δ, accountant, no DP) → refuse. BatchNorm models are
   refused here too, before any data is touched.
3. Train with :class:`~fedmed.privacy.trainer.DPTrainer`; check that Opacus ran
   exactly the approved mechanism and that every trained weight and the mean training
   loss are finite. Training that raises, an update with a NaN or Inf, or a loss that
   diverged is refused (step 4 never happens):
   nothing is released, so the ledger records nothing and no ε is spent.
4. Record the release in the ledger (durable), keep the update
   (:mod:`fedmed.clients.release_cache`) and sign the release — with the update's
   SHA-256 — into the audit log; only then does the update leave the node.

A round this site already released (same run, round and task in its ledger) is never
trained again: the node re-sends the update it kept, signs a ``release-repeated`` entry
and spends no ε (repeating a released output is post-processing), or refuses when the
kept update is gone — so a re-delivered or replayed message cannot make it release
twice, off the coordinator's record.

A refusal is an answer, not a failure: the node returns the weights it received,
``num_examples = 0`` and ``refused = 1`` with a ``reason``, and signs a ``refusal``
entry into its own log. The coordinator drops such replies before aggregating. The
reply carries the head of that refusal entry, so the coordinator witnesses refusals
too (cutting them from the end of the log fails ``fedmed audit verify``) — except
after a step-0 refusal: a log that lost its witnessed head offers no head to witness
(witnessing it would bless the reset log).

Identity (deployment): the coordinator names, per node, the site its node key was
provisioned for (``registered-site``) and that site's audit-key fingerprint
(``registered-audit-key``). A node whose own site or site-home key differs refuses
and signs why, before anything else is checked: a kit edited to claim another site
never trains.
Either way the reply's metrics are a :class:`fedmed.privacy.reply.FitReply`, the
typed contract the coordinator reads back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmed.audit import AuditError, AuditLog, Head
from fedmed.audit.entries import holds_head
from fedmed.audit.provenance import code_version, config_hash
from fedmed.clients import release_cache
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import Scalar
from fedmed.deid.sitekey import SiteKey
from fedmed.errors import ConfigError, PrivacyRefusal
from fedmed.privacy.guard import Decision, ReleaseRequest, check_release
from fedmed.privacy.job import DPJob, plan_release
from fedmed.privacy.ledger import Ledger, LedgerEntry, ledger_disagreement, signed_epsilon
from fedmed.privacy.policy import Policy
from fedmed.privacy.reply import FitReply, WitnessedHead
from fedmed.privacy.trainer import DPTrainer, validate_model
from fedmed.training.local_norms import LocalNorms, norm_positions
from fedmed.training.loop import TrainResult, TrainSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundJob:
    """What the coordinator asked this site to do in one round."""

    run: str
    round: int
    settings: TrainSettings
    dp: DPJob
    local_norm: bool = False  # keep normalisation layers local (fedmed.training.local_norms)
    witnessed: WitnessedHead | None = None  # the site's log head the coordinator last saw
    registered_site: str | None = None  # deployment: the site this node's key belongs to
    registered_audit_key: str | None = None  # and that site's provisioned audit key


@dataclass(frozen=True)
class RoundOutcome:
    """The reply to send: new weights (accepted) or the received ones (refused)."""

    weights: list[np.ndarray]
    num_examples: int
    reply: FitReply

    @property
    def metrics(self) -> dict[str, Scalar]:
        """The reply's fit metrics, as Flower carries them."""
        return self.reply.to_metrics()

    @property
    def refused(self) -> bool:
        return self.reply.refused


def run_private_round(
    site: HospitalSite, home_root: Path, weights: Sequence[np.ndarray], job: RoundJob
) -> RoundOutcome:
    """Check, train, record — or refuse (see the module docstring)."""
    received = [np.asarray(w) for w in weights]
    missing = not Path(home_root).exists()
    try:
        home = SiteHome.open(home_root, site.name, site.pack.name)
        with home.lock():
            audit = home.audit()
            mismatch = identity_mismatch(site, audit, job)
            if mismatch is not None:  # not the site it claims: nothing else is asked
                return _signed_refusal(site, home, audit, received, job, mismatch)
            gap = witness_gap(audit, job.witnessed, home.root, missing)
            if gap is not None:  # step 0: sign the refusal, report no ε (the log lost it)
                audit.append("refusal", _refusal_payload(site, job, gap))
                return refusal(site, received, gap)
            return _checked_round(site, home, audit, received, job)
    except (AuditError, PrivacyRefusal, OSError) as exc:  # nothing to sign with, or no home
        reason = f"site home unusable: {exc}"
        if job.witnessed is not None:
            reason += "; " + _restore_hint(job.witnessed)
        return refusal(site, received, reason)


def witness_gap(
    audit: AuditLog, witnessed: WitnessedHead | None, root: Path, missing: bool = False
) -> str | None:
    """Why the site's log does not hold the head the coordinator witnessed (None: it does,
    or nothing was witnessed yet). ``missing``: the home did not exist before this round."""
    if witnessed is None:
        return None
    entries = audit.entries
    last = entries[-1]["seq"] if entries else -1
    if missing:
        found = f"the site home {root} did not exist (created now only to sign this refusal)"
    elif last < witnessed.seq:
        found = f"the site's audit log in {root} ends at seq {last}"
    elif holds_head(entries, witnessed.seq, witnessed.hash):
        return None
    else:
        found = f"the site's audit log in {root} holds another entry at seq {witnessed.seq}"
    return (
        f"the coordinator witnessed this site's audit log at seq {witnessed.seq} but {found}: "
        "the site home was deleted, reset or restored from an older copy, and its privacy "
        f"ledger with it — refusing every round until it is restored; {_restore_hint(witnessed)}"
    )


def identity_mismatch(site: HospitalSite, audit: AuditLog, job: RoundJob) -> str | None:
    """Why this node is not the site the coordinator registered its key for (None: it is,
    or the coordinator named none — simulation)."""
    if job.registered_site is not None and job.registered_site != site.name:
        return (
            f"this node's key is registered to site {job.registered_site!r} but its kit says "
            f"{site.name!r}: a node trains only as the site it was provisioned for"
        )
    if job.registered_audit_key is not None and job.registered_audit_key != audit.key_fingerprint:
        return (
            f"the site home's audit key {audit.key_fingerprint} is not the one provisioned for "
            f"{site.name} ({job.registered_audit_key}): restore the site home that holds the "
            "kit's audit key"
        )
    return None


def _restore_hint(witnessed: WitnessedHead) -> str:
    return (
        "restore the whole site home (audit.jsonl with its .pub and .head, keys/, ledger.json, "
        "policy.toml) from a backup whose audit.jsonl holds the witnessed head "
        f"(seq {witnessed.seq}, hash {witnessed.hash})"
    )


def _refusal_payload(site: HospitalSite, job: RoundJob, reason: str) -> dict[str, Any]:
    return {"run": job.run, "round": job.round, "task": site.pack.name, "reason": reason}


@dataclass(frozen=True)
class _Approval:
    """Everything an accepted round needs: the rules, the record, the mechanism, the ε."""

    policy: Policy
    ledger: Ledger
    request: ReleaseRequest
    decision: Decision


@dataclass(frozen=True)
class _Trained:
    """What local training produced, and how (the DP trainer, the kept norm layers)."""

    weights: list[np.ndarray]
    result: TrainResult
    trainer: DPTrainer | None
    local_norms: LocalNorms | None


def _decide(
    site: HospitalSite, policy: Policy, ledger: Ledger, job: RoundJob
) -> _Approval | str:
    """The approval of this round, or the reason to refuse it (fail closed on any doubt)."""
    task = site.pack.name
    try:
        examples = len(site.data.train)
        request = plan_release(
            job.dp, task, examples, job.settings.batch_for(examples), job.settings.local_epochs
        )
        if request.noise_multiplier > 0:
            validate_model(site.pack.build_model(), task)
        decision = check_release(policy, ledger, request)
    except (PrivacyRefusal, ConfigError) as exc:
        return str(exc)
    if not decision.accepted:
        return decision.reason
    return _Approval(policy, ledger, request, decision)


def _signed_policy(home: SiteHome, audit: AuditLog) -> Policy:
    """The site's policy, after signing a ``policy-change`` entry if its digest is not the
    last one signed (first sight included): a raised budget is always in the chain."""
    policy, digest = home.policy_and_digest()
    signed = audit.of_kind("policy-change")
    last = signed[-1] if signed else None
    if last is None or last.get("sha256") != digest:
        audit.append(
            "policy-change",
            {
                "sha256": digest,
                "epsilon": policy.epsilon,
                "delta": policy.delta,
                "policy": policy.to_json(),
                "previous_sha256": last.get("sha256") if last else None,
                "previous_epsilon": last.get("epsilon") if last else None,
                "previous_delta": last.get("delta") if last else None,
            },
        )
    return policy


def _checked_ledger(home: SiteHome, audit: AuditLog) -> Ledger:
    """The ledger, if its releases are exactly the signed ``dp-release`` entries of the
    site's own log; PrivacyRefusal naming the first difference otherwise."""
    ledger = home.ledger()
    difference = ledger_disagreement(ledger.releases, audit.of_kind("dp-release"))
    if difference is not None:
        raise PrivacyRefusal(
            f"{ledger.path.name} disagrees with the signed audit log: {difference[1]}; the "
            "ledger was edited, reset or replaced, and the signed dp-release entries are the "
            "record of privacy spent — restore the ledger from a backup that matches them"
        )
    return ledger


def _checked_round(
    site: HospitalSite, home: SiteHome, audit: AuditLog, weights: list[np.ndarray], job: RoundJob
) -> RoundOutcome:
    """Steps 2–4 of the module docstring, under the site home's lock.

    The order is the guarantee: the release is in the ledger (durable) and signed into
    the audit log before the update is returned, so no update leaves unaccounted.
    """
    try:
        policy = _signed_policy(home, audit)
        ledger = _checked_ledger(home, audit)
    except PrivacyRefusal as exc:
        return _signed_refusal(site, home, audit, weights, job, str(exc))
    released = _released_in(ledger, job, site.pack.name)
    if released is not None:
        return _repeated_release(site, home, audit, weights, job, policy, released)
    approval = _decide(site, policy, ledger, job)
    if isinstance(approval, str):
        return _signed_refusal(site, home, audit, weights, job, approval)
    try:
        trained = _train(site, home, weights, job, approval)
    except Exception as exc:  # nothing was released: no ledger entry, no ε (module docstring)
        logger.debug("training failed at %s", site.name, exc_info=True)
        reason = f"training failed, nothing released: {_one_line(exc)}"
        return _signed_refusal(site, home, audit, weights, job, reason)
    non_finite = _non_finite(trained.weights)
    if non_finite:
        reason = (
            f"the trained update is not finite ({non_finite} NaN/Inf value(s)), nothing "
            "released: check the data and the learning rate"
        )
        return _signed_refusal(site, home, audit, weights, job, reason)
    if not math.isfinite(trained.result.mean_loss):
        # Diverged: a saturated model can keep finite weights while its loss is NaN/Inf
        # (a sigmoid at ±Inf logits has finite gradients), so the weights alone miss it.
        reason = (
            f"the training loss is not finite ({trained.result.mean_loss}), nothing "
            "released: check the data and the learning rate"
        )
        return _signed_refusal(site, home, audit, weights, job, reason)
    entry = _ledger_entry(site, job, approval, trained.trainer)
    approval.ledger.append(entry)  # durable before the update can leave
    if trained.local_norms is not None:
        trained.local_norms.save(trained.weights, norm_positions(site.pack.build_model()))
    update = release_cache.keep(home.root, job.run, job.round, trained.weights)
    head = _sign_release(audit, site, job, approval, entry, trained.trainer, update)
    reply = _accepted_reply(site, trained.result, approval, entry, head)
    return RoundOutcome(trained.weights, trained.result.num_examples, reply)


def _released_in(ledger: Ledger, job: RoundJob, task: str) -> LedgerEntry | None:
    """The ledger's release of this very round (same run, round and task), if any."""
    for entry in ledger.releases:
        if (entry.run, entry.round, entry.task) == (job.run, job.round, task):
            return entry
    return None


def _repeated_release(
    site: HospitalSite,
    home: SiteHome,
    audit: AuditLog,
    weights: list[np.ndarray],
    job: RoundJob,
    policy: Policy,
    entry: LedgerEntry,
) -> RoundOutcome:
    """Answer a round already released with the kept update (no new ε, a signed
    ``release-repeated`` entry), or refuse when that update is not kept any more."""
    signed = [
        p for p in audit.of_kind("dp-release")
        if (p.get("run"), p.get("round"), p.get("task")) == (job.run, job.round, site.pack.name)
    ]  # fmt: skip
    kept = release_cache.kept(home.root, job.run, job.round)
    if kept is None or not signed or kept.sha256 != signed[-1].get("update_sha256"):
        reason = (
            f"this site already released its update for run {job.run} round {job.round} and "
            "does not keep that update; a repeated round is refused rather than released twice"
        )
        return _signed_refusal(site, home, audit, weights, job, reason)
    head = audit.append(
        "release-repeated",
        {"run": job.run, "round": job.round, "task": site.pack.name, "update_sha256": kept.sha256},
    )
    spent = signed_epsilon(audit.of_kind("dp-release"), policy.delta, policy.accountant)
    reply = FitReply(
        site=site.name,
        refused=False,
        steps=entry.steps,
        device=site.device.type,
        **_account(spent, policy),
        noise_multiplier=entry.noise_multiplier,
        sample_rate=entry.sample_rate,
        clip_norm=entry.clip_norm,
        audit_key=head.key,
        audit_seq=head.seq,
        audit_hash=head.hash,
    )
    return RoundOutcome(kept.weights, len(site.data.train), reply)


def _signed_refusal(
    site: HospitalSite,
    home: SiteHome,
    audit: AuditLog,
    weights: list[np.ndarray],
    job: RoundJob,
    reason: str,
) -> RoundOutcome:
    """Refuse the round: sign why into the site's log and reply with the received weights
    and the site's ε account, unchanged by this round."""
    head = audit.append("refusal", _refusal_payload(site, job, reason))
    return refusal(site, weights, reason, _spent(home, audit), head)


def _non_finite(weights: Sequence[np.ndarray]) -> int:
    """How many values of ``weights`` are NaN or ±Inf (integer arrays are always finite)."""
    return sum(
        int(np.count_nonzero(~np.isfinite(w)))
        for w in (np.asarray(array) for array in weights)
        if np.issubdtype(w.dtype, np.inexact)
    )


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a one-line refusal reason."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _train(
    site: HospitalSite,
    home: SiteHome,
    weights: list[np.ndarray],
    job: RoundJob,
    approval: _Approval,
) -> _Trained:
    """Train under exactly the approved mechanism.

    Opacus's own record of the run (``verify``) and the step count must match what the
    guard approved: a mismatch would make the ledger's ε wrong, so it raises and the
    update never leaves.
    """
    request = approval.request
    trainer = _trainer(site, home, request, job, len(approval.ledger.releases))
    local_norms = LocalNorms.of(home.root, job.run) if job.local_norm else None
    start = local_norms.apply(weights) if local_norms else weights
    new_weights, result = site.train(start, job.settings, wrap=trainer.wrap if trainer else None)
    if trainer is not None:
        trainer.verify()
    if result.steps != request.steps:
        raise RuntimeError(f"trained {result.steps} steps, {request.steps} were approved")
    return _Trained(new_weights, result, trainer, local_norms)


def _ledger_entry(
    site: HospitalSite, job: RoundJob, approval: _Approval, trainer: DPTrainer | None
) -> LedgerEntry:
    """The ledger's record of the release: the mechanism, at the policy's δ and accountant,
    so that every later ε of this site is composed over it."""
    request = approval.request
    return LedgerEntry(
        run=job.run,
        round=job.round,
        task=site.pack.name,
        noise_multiplier=request.noise_multiplier,
        sample_rate=request.sample_rate,
        steps=request.steps,
        delta=approval.policy.delta,
        accountant=approval.policy.accountant,
        epsilon_after=approval.decision.epsilon_after,
        clip_norm=job.dp.clip_norm if trainer else 0.0,
        dataset=site.data.fingerprint,
        time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _sign_release(
    audit: AuditLog,
    site: HospitalSite,
    job: RoundJob,
    approval: _Approval,
    entry: LedgerEntry,
    trainer: DPTrainer | None,
    update: str,
) -> Head:
    """Sign the participation and the release (with ``update``, the SHA-256 of the update
    that leaves) into the site's log; the returned head goes into the reply so the
    coordinator can witness it."""
    audit.append(
        "round-participation",
        {"run": job.run, "round": job.round, "task": site.pack.name, "decision": "joined"},
    )
    return audit.append(
        "dp-release",
        {
            **entry.to_json(),
            "mechanism": "dp-sgd (Opacus, Poisson sampling, flat clipping)" if trainer else "none",
            "grad_sample_mode": trainer.mode_used if trainer else "",
            "epsilon_budget": approval.policy.epsilon,
            "job": config_hash(asdict(job.dp)),
            "code": code_version(),
            "update_sha256": update,
        },
    )


def _accepted_reply(
    site: HospitalSite,
    result: TrainResult,
    approval: _Approval,
    entry: LedgerEntry,
    head: Head,
) -> FitReply:
    """The reply of an accepted round: what was trained, the ε account, the mechanism and
    the audit-log head (the contract in ``fedmed.clients.app``)."""
    return FitReply(
        site=site.name,
        refused=False,
        train_loss=result.mean_loss,
        steps=result.steps,
        device=site.device.type,
        **_account(approval.decision.epsilon_after, approval.policy),
        noise_multiplier=approval.request.noise_multiplier,
        sample_rate=approval.request.sample_rate,
        clip_norm=entry.clip_norm,
        audit_key=head.key,
        audit_seq=head.seq,
        audit_hash=head.hash,
    )


def _trainer(
    site: HospitalSite, home: SiteHome, request: ReleaseRequest, job: RoundJob, index: int
) -> DPTrainer | None:
    """The DP trainer of the approved mechanism, drawing its noise and sampling from the
    site's secret (never from the coordinator's ``seed``: ``DPTrainer``'s docstring).

    The seed is an HMAC of the secret over the run, round, task and ``index`` — how many
    releases the ledger already holds — so no two releases of a site ever share noise,
    whatever run ids the coordinator chooses (shared noise would cancel in a difference)."""
    if request.noise_multiplier <= 0:
        return None
    dp = job.dp
    secret = SiteKey.load_or_create(home.root).number(
        "dp-sgd-noise", job.run, str(job.round), site.pack.name, str(index)
    )
    return DPTrainer(
        noise_multiplier=request.noise_multiplier,
        sample_rate=request.sample_rate,
        steps=request.steps,
        clip_norm=dp.clip_norm,
        loss=site.pack.loss,
        grad_sample_mode=dp.grad_sample_mode,
        task=site.pack.name,
        secret_seed=secret % 2**63,
        max_physical_batch=site.max_physical_batch,
    )


def _account(epsilon: float, policy: Policy) -> dict[str, Any]:
    """The site's ε account as :class:`FitReply` fields: ε so far, at the policy's δ and
    accountant, beside its budget."""
    return {
        "epsilon": epsilon,
        "delta": policy.delta,
        "epsilon_budget": policy.epsilon,
        "accountant": policy.accountant,
    }


def _spent(home: SiteHome, audit: AuditLog) -> dict[str, Any]:
    """The site's ε account for a refusal reply, recomputed from the signed ``dp-release``
    entries (never from a ledger that may disagree), if the policy can be read."""
    try:
        policy = home.policy()
        spent = signed_epsilon(audit.of_kind("dp-release"), policy.delta, policy.accountant)
    except (PrivacyRefusal, ConfigError):
        return {}
    return _account(spent, policy)


def refusal(
    site: HospitalSite,
    weights: list[np.ndarray],
    reason: str,
    account: Mapping[str, Any] | None = None,
    head: Head | None = None,
) -> RoundOutcome:
    """The reply of a refused round: the received weights, no examples, and why (with the
    site's ε account when it could be read: :func:`_spent`, and the head of the signed
    refusal for the coordinator to witness)."""
    signed = {"audit_key": head.key, "audit_seq": head.seq, "audit_hash": head.hash} if head else {}
    reply = FitReply(site=site.name, refused=True, reason=reason, **(account or {}), **signed)
    return RoundOutcome(weights, 0, reply)
