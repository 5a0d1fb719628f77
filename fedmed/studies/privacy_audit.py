"""The empirical privacy audit: per audited site, one federated run with canaries at that
site, then two attacks on the final model.

What it tests: the accountant says each site's releases are (ε, δ)-DP; an attack on a
model trained exactly as the federation trains gives a lower bound on the real ε. A
lower bound above the accounted ε would be a bug in the DP training or its accounting.

One run per audited site (:func:`audit_site`; :func:`audit_federation` runs them all):

1. The site gets ``count`` canaries (:mod:`fedmed.studies.canaries`), each added to its
   training split independently with probability ½ — the coin flips are the audit's
   randomness (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run",
   NeurIPS 2023). Only that site has canaries: canaries of several sites in one run would
   share the model's few quiet directions on small models and blur one another.
2. The federation trains on the production code path, in this process: each round the
   coordinator's own instructions (``fedmed.server.app.fit_config_fn``) go to each site's
   node round (``fedmed.clients.private_round.run_private_round``: policy check, σ
   calibrated for the planned rounds, Opacus DP-SGD with the configured clip, batch size,
   epochs, ledger and signed log), and the federation's registered strategy aggregates the
   accepted updates. Site homes are fresh, with a policy that caps nothing (infinite
   budget, no σ floor), so the mechanism is exactly the configured one and the ledger's ε
   is the ε of this run alone; the audited site's home is kept in the audit's folder.
3. On the final global model: each canary's gain in confidence in its label since the
   initial model gives the one-run ε lower bound at 95 % confidence
   (:mod:`fedmed.studies.canary_bound`), and the loss-threshold membership attack on the
   site's training rows against its held-out rows gives an AUC and the TPR at 0.1 % FPR
   (:mod:`fedmed.studies.membership`).

What it does not do: the Flower transport (Ray, messages, SecAgg+) is not involved — it
moves weights, it does not change them — and client-level DP at the coordinator is not
audited (its noise would only make the site-level bound looser), so a federation with
``client-dp`` on is refused rather than audited as something else. The sites' data are
read as local studies read them (the pack's own loading, no signed admission entries).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from torch import nn
from torch.utils.data import ConcatDataset, Subset, TensorDataset

from fedmed.clients.hospital import round_job
from fedmed.clients.node import HospitalSite
from fedmed.clients.private_round import RoundOutcome, run_private_round
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.device import pick_device
from fedmed.errors import ConfigError, FedmedError
from fedmed.privacy.policy import Policy
from fedmed.server.app import fit_config_fn, initial_model
from fedmed.server.strategies import build_strategy
from fedmed.studies.canaries import default_count, make_canaries
from fedmed.studies.canary_bound import CONFIDENCE, audit_bound
from fedmed.studies.membership import LOW_FPR, example_losses, logit_confidence, loss_attack
from fedmed.tasks import SiteData, TaskPack, get_task
from fedmed.tasks.base import fingerprint_arrays
from fedmed.training.loop import TrainSettings, get_weights, set_weights


@dataclass(frozen=True)
class AuditedSite:
    """The audited site as its run trains it: its real splits plus its included canaries."""

    site: HospitalSite
    real: SiteData
    canaries: TensorDataset
    included: np.ndarray  # one coin flip per canary


def with_canaries(
    pack: TaskPack, data: SiteData, canaries: TensorDataset, rng: np.random.Generator
) -> AuditedSite:
    """``data`` with each canary added to its training split with probability ½."""
    included = rng.random(len(canaries)) < 0.5
    kept = Subset(canaries, np.flatnonzero(included).tolist())
    marked = fingerprint_arrays([np.frombuffer(data.fingerprint.encode(), np.uint8), included])
    trained = dataclasses.replace(data, train=ConcatDataset([data.train, kept]), fingerprint=marked)
    site = HospitalSite(name=data.site, pack=pack, data=trained, device=pick_device())
    return AuditedSite(site, data, canaries, included)


def audit_homes(config: FederationConfig, sites: list[str], root: Path) -> dict[str, Path]:
    """Fresh site homes whose policy caps nothing (module docstring, step 2)."""
    policy = Policy(
        epsilon=math.inf,
        delta=config.delta,
        min_noise_multiplier=0.0,
        allowed_tasks=(config.task,),
        accountant=config.accountant,
    )
    homes = {site: root / site for site in sites}
    for site, home in homes.items():
        SiteHome.create(home, site, policy, details={"purpose": "fedmed audit privacy"})
    return homes


def train_federation(
    config: FederationConfig, sites: list[HospitalSite], homes: dict[str, Path]
) -> tuple[list[np.ndarray], dict[str, RoundOutcome]]:
    """Every round of ``config`` through the sites' node rounds and the coordinator's
    strategy; the final global weights and each site's last accepted round."""
    pack = sites[0].pack
    weights = get_weights(initial_model(config, pack))
    run_id = f"privacy-audit-{time.strftime('%Y%m%d-%H%M%S')}"
    instructions = fit_config_fn(config, pack, run_id)
    strategy = build_strategy(
        config,
        num_sites=len(sites),
        initial_parameters=ndarrays_to_parameters(weights),
        on_fit_config_fn=instructions,
    )
    last: dict[str, RoundOutcome] = {}
    for server_round in range(1, config.num_server_rounds + 1):
        fit_config = instructions(server_round)
        results = []
        for site in sites:
            outcome = run_private_round(
                site, homes[site.name], weights, round_job(fit_config, site.name)
            )
            if outcome.refused:
                raise FedmedError(
                    f"privacy audit: {site.name} refused round {server_round}: "
                    f"{outcome.reply.reason}"
                )
            last[site.name] = outcome
            reply = FitRes(
                status=Status(Code.OK, ""),
                parameters=ndarrays_to_parameters(outcome.weights),
                num_examples=outcome.num_examples,
                metrics=outcome.metrics,
            )
            # Flower's strategies read only the FitRes; no node proxy exists in this process.
            results.append((cast(ClientProxy, None), reply))
        parameters, _ = strategy.aggregate_fit(server_round, results, [])
        if parameters is None:
            raise FedmedError(f"privacy audit: round {server_round} aggregated nothing")
        weights = parameters_to_ndarrays(parameters)
    return weights, last


def site_findings(
    audited: AuditedSite, initial: nn.Module, final: nn.Module, outcome: RoundOutcome
) -> dict[str, Any]:
    """The accounted ε, the canary bound and the membership attack of the audited site.

    A canary's score is how much more confident of its label the final model is than the
    initial one (:func:`fedmed.studies.membership.logit_confidence`): training on it is
    what raises it.
    """
    site = audited.site
    pack, device = site.pack, site.device

    def confidence(model: nn.Module) -> np.ndarray:
        return logit_confidence(example_losses(pack, model, audited.canaries, device))

    reply = outcome.reply
    bound = audit_bound(
        confidence(final) - confidence(initial), audited.included, reply.delta or 0.0
    )
    attack = loss_attack(
        example_losses(pack, final, audited.real.train, device),
        example_losses(pack, final, audited.real.test, device),
    )
    return {
        "epsilon_accounted": reply.epsilon,
        "delta": reply.delta,
        "noise_multiplier": reply.noise_multiplier,
        "sample_rate": reply.sample_rate,
        "clip_norm": reply.clip_norm,
        "epsilon_lower_bound": bound.epsilon_lower_bound,
        "canaries": bound.canaries,
        "canaries_included": int(audited.included.sum()),
        "guesses": bound.guesses,
        "correct_guesses": bound.correct,
        "guess_plans_tried": bound.plans_tried,
        "mia_auc": attack.auc,
        "tpr_at_0.1pct_fpr": attack.tpr_at_low_fpr,
        "members": attack.members,
        "non_members": attack.non_members,
    }


def audit_site(
    config: FederationConfig,
    data: dict[str, SiteData],
    target: str,
    count: int,
    rng: np.random.Generator,
    out: Path,
) -> dict[str, Any]:
    """One federated run with canaries at ``target``; its findings. The audited site's
    home (its ledger: the accounted ε) is kept as ``out/site-homes/<target>``; the other
    sites' homes served only this run."""
    pack = get_task(config.task)
    initial = initial_model(config, pack)
    held_out = [site.test for name, site in data.items() if name != target]
    canaries = make_canaries(pack, [d.train for d in data.values()], held_out, count, initial, rng)
    audited = with_canaries(pack, data[target], canaries, rng)
    sites = [  # each node as configured, its memory limit included
        dataclasses.replace(audited.site, max_physical_batch=config.max_physical_batch)
        if name == target
        else HospitalSite(name, pack, site, pick_device(), config.max_physical_batch)
        for name, site in data.items()
    ]
    with tempfile.TemporaryDirectory(prefix="fedmed-audit-", dir=out) as scratch:
        homes = audit_homes(config, list(data), Path(scratch))
        weights, last = train_federation(config, sites, homes)
        kept = out / "site-homes" / target
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(homes[target], kept)
    final = pack.build_model()
    set_weights(final, weights)
    device = audited.site.device
    return site_findings(audited, initial.to(device), final.to(device), last[target])


def audit_federation(
    config: FederationConfig,
    out: Path,
    sites: list[str] | None = None,
    canaries: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The audit of ``config`` (module docstring): one run per audited site (``sites``, by
    default all), ``canaries`` canaries in each (default
    :func:`fedmed.studies.canaries.default_count`); the findings as a JSON-ready document.
    ``seed`` draws the coin flips (and which held-out rows become canaries, with which
    wrong labels); training is seeded as the federation seeds it."""
    if config.client_dp:
        raise ConfigError(
            "audit privacy tests each site's sample-level DP-SGD; client-level DP at the "
            "coordinator is not audited: run it with --set client-dp=false"
        )
    pack = get_task(config.task)
    data_dir = Path(config.data_dir) if config.data_dir else None
    names = config.site_list(pack.site_names(data_dir))
    unknown = sorted(set(sites or ()) - set(names))
    if unknown:
        raise ConfigError(f"no site {', '.join(unknown)} in this federation: {', '.join(names)}")
    data = {name: pack.load_site(name, data_dir, config.seed) for name in names}
    count = canaries or default_count(data[names[0]].train)
    if count < 2:
        raise ConfigError(f"the audit needs at least 2 canaries per site, got {count}")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    settings = TrainSettings.for_pack(config, pack)
    return {
        "federation": config.federation,
        "task": config.task,
        "confidence": CONFIDENCE,
        "low_fpr": LOW_FPR,
        "canaries_per_site": count,
        "canary_seed": seed,
        "dp": {
            "enabled": config.dp,
            "target_epsilon": config.epsilon if config.dp else None,
            "delta": config.delta,
            "noise_multiplier": config.noise_multiplier,
            "clip_norm": config.clip_norm,
            "accountant": config.accountant,
            "grad_sample_mode": config.grad_sample_mode,
        },
        "training": {
            "strategy": config.strategy,
            "rounds": config.num_server_rounds,
            "local_epochs": settings.local_epochs,
            "batch_size": settings.batch_size,
            "steps_per_epoch": settings.steps_per_epoch,
            "lr": settings.lr,
            "seed": config.seed,
        },
        "per_site": {
            name: audit_site(config, data, name, count, rng, out) for name in sites or names
        },
    }
