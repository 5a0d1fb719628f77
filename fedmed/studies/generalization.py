"""Cross-institution generalization study (FLamby-style), on the real Simulation Engine.

For each seed: local-only models (one per site), a pooled model, and one
federation per strategy, each scored on every site's test split; then
leave-one-site-out: the federation and the pooled model are trained without one
site and scored on that site's test split, beside the mean of the other sites' local
models (the all-sites ones, which never saw it either). Means and
standard deviations over seeds go into a JSON document and a Markdown table.

Two personalised regimes (``fedmed.training.local_norms``) score each site with *its own*
model, so their row holds one site-specific model per column: ``local-norm`` (a
FedAvg federation whose sites keep their normalisation layers) and ``fine-tuned``
(the FedAvg model trained a few more epochs at each site). Leave-one-site-out adds
``fine-tuned``: the federation's model adapted on the held-out site's training split —
a hospital adopting a model it never contributed to and tuning it on its own data.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.deid.sitekey import SiteKey
from fedmed.device import pick_device
from fedmed.errors import ConfigError
from fedmed.outputs import Scores
from fedmed.privacy.policy import DEFAULT_EPSILON, Policy
from fedmed.simulation import run_simulation
from fedmed.studies.fine_tuning import fine_tune
from fedmed.studies.recorded_baselines import BaselineRecipe, BaselineSource, mean_std
from fedmed.tasks import SiteData, TaskPack, get_task
from fedmed.training.local_norms import norm_positions
from fedmed.training.loop import TrainSettings, get_weights

LOCAL_NORM = "local-norm"  # a pseudo-strategy: FedAvg with normalisation layers kept local
FINE_TUNED = "fine-tuned"


def study_site_homes(config: FederationConfig, homes: Path) -> None:
    """Fresh simulated site homes for one federation of the study (module docstring).

    Each home's secret — what its node draws DP noise and Poisson sampling from, with the
    run id — is derived from the site and the seed (:meth:`SiteKey.create_derived`), and
    the federation gets a fixed run id (:func:`federated_scores`), so a DP study run again
    gives the same numbers; a real site's secret is random."""
    epsilon = DEFAULT_EPSILON if config.dp else math.inf
    policy = Policy(epsilon=epsilon, allowed_tasks=(config.task,))
    pack = get_task(config.task)
    data_dir = Path(config.data_dir) if config.data_dir else None
    for site in config.site_list(pack.site_names(data_dir)):
        SiteHome.create(homes / site, site, policy)
        SiteKey.create_derived(homes / site, f"generalization|{site}|{config.seed}")


def federated_scores(config: FederationConfig, run_dir: Path) -> tuple[Scores, Path]:
    """Run one federation; its final per-site scores and its run directory.

    The scores are the sites' own evaluations of the last round (with their own
    normalisation layers under ``local-norm``).
    """
    shutil.rmtree(run_dir, ignore_errors=True)
    if config.strategy == LOCAL_NORM:
        config = replace(config, strategy="fedavg", local_norm=True)
    # The study's federations are its own: fresh site homes and a coordinator home (key,
    # witness record) inside the run, so a study run again into the same folder, or after
    # deleting it, starts clean instead of meeting the witness of the sites it replaced.
    # Its run id is fixed (the run folder's name: fedavg-seed0, loso-va-seed0, ...), so the
    # nodes' noise depends only on what the study's command names (study_site_homes).
    config = replace(config, run_dir=str(run_dir), sites_home=str(run_dir / "sites"),
                     coordinator_home=str(run_dir / "coordinator"),
                     run_id=run_dir.name)  # fmt: skip
    study_site_homes(config, run_dir / "sites")
    run_simulation(config)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return metrics["final"]["per_site"], run_dir


def final_model(pack: TaskPack, run_dir: Path) -> torch.nn.Module:
    """The federation's final (global) model, as the coordinator saved it."""
    model = pack.build_model()
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu"))
    return model


def site_test_score(pack: TaskPack, model: torch.nn.Module, site: SiteData) -> dict[str, float]:
    device = pick_device()
    return pack.evaluate(model.to(device), site.test, device)


def fine_tuned_scores(
    pack: TaskPack,
    run_dir: Path,
    sites: dict[str, SiteData],
    epochs: int,
    settings: TrainSettings,
) -> Scores:
    """The federation's model fine-tuned at each site of ``sites``, on that site's test split."""
    weights = get_weights(final_model(pack, run_dir))
    device = pick_device()
    return {
        name: site_test_score(pack, fine_tune(pack, weights, data, epochs, settings, device), data)
        for name, data in sites.items()
    }


def baseline_recipe(config: FederationConfig, pack: TaskPack) -> BaselineRecipe:
    """How this study's local-only and pooled models train: as long as a federation, alone."""
    data_dir = Path(config.data_dir) if config.data_dir else None
    settings = TrainSettings.for_pack(config, pack, seed=config.seed)
    return BaselineRecipe(
        task=config.task,
        sites=tuple(config.site_list(pack.site_names(data_dir))),
        data_dir=config.data_dir,
        epochs=config.num_server_rounds * settings.local_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        momentum=settings.momentum,
        steps_per_epoch=settings.steps_per_epoch,
    )


def study(
    config: FederationConfig,
    seeds: Iterable[int],
    strategies: Iterable[str],
    out: Path,
    baselines: BaselineSource,
    with_leave_one_out: bool = True,
    on_seed_done: Callable[[dict[str, Any]], None] | None = None,
    fine_tune_epochs: int = 0,
) -> dict[str, Any]:
    """Run the whole study; raw per-seed scores, keyed by regime.

    ``baselines`` gives the local-only and pooled rows (trained now, or recorded by an
    earlier study: ``fedmed.studies.recorded_baselines``). ``strategies`` may include
    ``local-norm``; ``fine_tune_epochs`` > 0 adds the ``fine-tuned`` regime (it needs
    ``fedavg`` among the strategies). ``on_seed_done`` receives the scores so far after
    every seed, so a study of an hour that is interrupted keeps every finished seed.
    """
    pack = get_task(config.task)
    data_dir = Path(config.data_dir) if config.data_dir else None
    sites = config.site_list(pack.site_names(data_dir))
    strategies = list(strategies)
    check_regimes(pack, strategies, fine_tune_epochs)
    raw: dict[str, Any] = {"all_sites": {}, "leave_one_out": {}}
    for seed in seeds:
        seeded = replace(config, seed=seed)
        settings = TrainSettings.for_pack(config, pack, seed=seed)
        runs = baselines.all_sites(seed)
        for strategy in strategies:
            scores, run_dir = federated_scores(
                replace(seeded, strategy=strategy), out / "runs" / f"{strategy}-seed{seed}"
            )
            runs[strategy] = scores
            if strategy == "fedavg" and fine_tune_epochs:
                site_data = {site: pack.load_site(site, data_dir, seed) for site in sites}
                runs[FINE_TUNED] = fine_tuned_scores(
                    pack, run_dir, site_data, fine_tune_epochs, settings
                )
        raw["all_sites"][str(seed)] = runs
        if with_leave_one_out:
            raw["leave_one_out"][str(seed)] = leave_one_out(
                seeded, pack, sites, data_dir, baselines, out, fine_tune_epochs
            )
        if on_seed_done is not None:
            on_seed_done(raw)
    return raw


def leave_one_out(
    config: FederationConfig,
    pack: TaskPack,
    sites: list[str],
    data_dir: Path | None,
    baselines: BaselineSource,
    out: Path,
    fine_tune_epochs: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """For each held-out site: FedAvg, pooled and local-only models trained without it."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    settings = TrainSettings.for_pack(config, pack, seed=config.seed)
    for held in sites:
        others = [s for s in sites if s != held]
        _, run_dir = federated_scores(
            replace(config, strategy="fedavg", sites=",".join(others)),
            out / "runs" / f"loso-{held}-seed{config.seed}",
        )
        held_out = pack.load_site(held, data_dir, config.seed)
        result[held] = {
            "fedavg": site_test_score(pack, final_model(pack, run_dir), held_out),
            **baselines.held_out(config.seed, held),
        }
        if fine_tune_epochs:
            result[held][FINE_TUNED] = fine_tuned_scores(
                pack, run_dir, {held: held_out}, fine_tune_epochs, settings
            )[held]
    return result


def default_strategies(pack: TaskPack) -> list[str]:
    """FedAvg, FedProx, FedAdam, and ``local-norm`` where the model has normalisation layers."""
    keeps_norms = bool(norm_positions(pack.build_model()))
    return ["fedavg", "fedprox", "fedadam", *([LOCAL_NORM] if keeps_norms else [])]


def check_regimes(pack: TaskPack, strategies: list[str], fine_tune_epochs: int) -> None:
    """ConfigError before hours of training if a requested regime cannot run for ``pack``."""
    if LOCAL_NORM in strategies and not norm_positions(pack.build_model()):
        raise ConfigError(
            f"{LOCAL_NORM}: the {pack.name} model has no normalisation layer with parameters "
            "to keep at the sites; leave it out of --strategies"
        )
    if fine_tune_epochs and "fedavg" not in strategies:
        raise ConfigError("the fine-tuned regime adapts the FedAvg model: add fedavg to "
                          "--strategies or set --fine-tune-epochs 0")  # fmt: skip


def summarise(raw: dict[str, Any], metric: str) -> dict[str, Any]:
    """Mean and std over seeds of ``metric`` for every regime × test site (+ mean over sites)."""
    seeds = sorted(raw["all_sites"])
    regimes = list(raw["all_sites"][seeds[0]])
    sites = list(raw["all_sites"][seeds[0]]["pooled"])
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for regime in regimes:
        row = {
            site: mean_std([raw["all_sites"][s][regime][site][metric] for s in seeds])
            for site in sites
        }
        row["mean"] = mean_std(
            [mean_std([raw["all_sites"][s][regime][x][metric] for x in sites])[0] for s in seeds]
        )
        table[regime] = row
    held_out = {
        held: {
            regime: mean_std([raw["leave_one_out"][s][held][regime][metric] for s in seeds])
            for regime in raw["leave_one_out"][seeds[0]][held]
        }
        for held in raw["leave_one_out"].get(seeds[0], {})
    }
    return {
        "metric": metric,
        "seeds": len(seeds),
        "sites": sites,
        "table": table,
        "leave_one_out": held_out,
    }


def _cell(value: tuple[float, float]) -> str:
    return "n/a" if math.isnan(value[0]) else f"{value[0]:.3f} ± {value[1]:.3f}"


def to_markdown(summary: dict[str, Any], title: str) -> str:
    """Two Markdown tables: every regime on every site's test split, and leave-one-site-out."""
    sites, metric = summary["sites"], summary["metric"]
    lines = [
        f"### {title}: {metric}, mean ± std over {summary['seeds']} seeds",
        "",
        "| trained on | " + " | ".join(sites) + " | mean over sites |",
        "|---|" + "---:|" * (len(sites) + 1),
    ]
    for regime, row in summary["table"].items():
        lines.append(f"| {regime} | " + " | ".join(_cell(row[s]) for s in [*sites, "mean"]) + " |")
    if any(math.isnan(row[s][0]) for row in summary["table"].values() for s in sites):
        lines += ["", f"n/a: {metric} is undefined there (e.g. AUC on a one-class test split); "
                  "means over sites leave it out."]  # fmt: skip
    if not summary["leave_one_out"]:
        return "\n".join(lines) + "\n"
    regimes = list(next(iter(summary["leave_one_out"].values())))
    lines += [
        "",
        f"Leave-one-site-out ({metric} on the held-out site's test split; trained on the others):",
        "",
        "| held-out site | " + " | ".join(regimes) + " |",
        "|---|" + "---:|" * len(regimes),
    ]
    for held, row in summary["leave_one_out"].items():
        lines.append(f"| {held} | " + " | ".join(_cell(row[r]) for r in regimes) + " |")
    return "\n".join(lines) + "\n"
