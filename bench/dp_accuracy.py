"""Score against ε and against examples per site: any federation, per-site DP-SGD, seeds.

Usage::

    python bench/dp_accuracy.py [--federation examples/heart] [--seeds 5]
                                [--epsilons 0.5,1,3,8,inf] [--sizes 1000,5000]
                                [--rounds 20] [--set KEY=VALUE ...] [--json OUT] [--check-ray]

For each size (the ``train-size`` pack setting: training examples per built-in site,
``fedmed.tasks.site_size``; left out: the built-in sites), each ε (``inf`` = DP off) and
each seed it runs FedAvg over the federation's sites and prints the mean over sites of
the final global model's primary metric (mean ± sd over seeds) and each site's mean, so a
hospital can read off the score its budget buys at its data size (docs/privacy.md § DP
recipes and curves). ``--json`` also writes every metric of every run.

The federation runs in this process, without Ray, but through the same code as a
real run: each site is a :class:`fedmed.clients.hospital.HospitalClient` whose ``fit``
goes through the site's policy check, DP-SGD and ledger
(:mod:`fedmed.clients.private_round`), with the coordinator's own per-round
instructions (:func:`fedmed.server.app.fit_config_fn`) and Flower's FedAvg
weighted mean (``flwr.server.strategy.aggregate``). ``--check-ray`` runs one
configuration both ways and prints both, to show they agree. A site's data are loaded once
per (size, seed) and shared by every ε: DP changes how a site trains, not what it holds.

Every run gets fresh site homes in a temporary folder with an unbounded budget
(``epsilon = inf``): this measures utility at a given ε, not budget enforcement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.server.strategy.aggregate import aggregate

from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig, load_federation
from fedmed.deid.sitekey import SiteKey
from fedmed.errors import ConfigError
from fedmed.privacy.policy import Policy
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, get_weights

FEDERATION = Path(__file__).resolve().parents[1] / "examples" / "heart"


def open_unbounded_home(root: Path, site: str, task: str, seed: int) -> None:
    """A fresh site home whose policy has no ε cap (so DP-off runs are allowed too).

    Its site secret — from which the node draws DP noise and sampling — is derived from
    ``seed`` and the site, so a seed's numbers are the same in every run of this bench and
    in both halves of ``--check-ray`` (a real site's secret is random)."""
    SiteHome.open(root, site, task)
    SiteKey.create_derived(root, f"dp-accuracy|{site}|{seed}")
    (root / "policy.toml").write_text(
        Policy(epsilon=math.inf, min_noise_multiplier=0.0, allowed_tasks=(task,)).to_toml()
    )


_LOADED: dict[tuple[str, str, int], HospitalSite] = {}


def loaded_site(config: FederationConfig, site: str) -> HospitalSite:
    """``site``'s data for the config's task and seed, loaded once per bench process."""
    key = (repr(config.task), site, config.seed)
    if key not in _LOADED:
        _LOADED[key] = HospitalSite.open(config.task, site, config.data_dir or None, config.seed)
    return _LOADED[key]


def run_in_process(
    config: FederationConfig, homes: Path, run_id: str = ""
) -> dict[str, dict[str, float]]:
    """Every metric of the final global model per site, FedAvg over HospitalClient.fit.

    ``run_id`` (default ``bench-seed<seed>``): the run the sites are told; each site draws
    its DP noise from its secret and the run id, so ``--check-ray`` passes the Ray run's."""
    clients, weights = federate(config, homes, run_id)
    return {c.site.name: c.site.evaluate(weights) for c in clients}


def federate(
    config: FederationConfig, homes: Path, run_id: str = ""
) -> tuple[list[HospitalClient], list[np.ndarray]]:
    """The sites and the final global weights of FedAvg over HospitalClient.fit."""
    pack = get_task(config.task)
    sites = config.site_list(pack.site_names(Path(config.data_dir) if config.data_dir else None))
    clients = []
    for site in sites:
        open_unbounded_home(homes / site, site, config.task, config.seed)
        node = dataclasses.replace(loaded_site(config, site),
                                   max_physical_batch=config.max_physical_batch)
        clients.append(HospitalClient(node, homes / site))
    torch.manual_seed(config.seed)
    weights = get_weights(pack.build_model())
    instructions = fit_config_fn(config, pack, run_id=run_id or f"bench-seed{config.seed}")
    for server_round in range(1, config.num_server_rounds + 1):
        replies = [client.fit(weights, instructions(server_round)) for client in clients]
        accepted = [(w, n) for w, n, metrics in replies if not metrics["refused"]]
        if len(accepted) < len(clients):
            raise RuntimeError(f"round {server_round}: a site refused: {replies}")
        weights = aggregate(accepted)
    return clients, weights


def run_with_ray(
    config: FederationConfig, homes: Path, out: Path
) -> tuple[dict[str, float], str]:
    """The same federation on Flower's Simulation Engine (for --check-ray): per-site
    scores and the run's id."""
    import json

    from fedmed.simulation import run_simulation

    pack = get_task(config.task)
    for site in config.site_list(pack.site_names()):
        open_unbounded_home(homes / site, site, config.task, config.seed)
    config = dataclasses.replace(config, sites_home=str(homes), run_dir=str(out))
    metrics = json.loads((run_simulation(config) / "metrics.json").read_text())
    scores = {s: v[pack.primary_metric] for s, v in metrics["final"]["per_site"].items()}
    return scores, str(metrics["run-id"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--federation", type=Path, default=FEDERATION,
                        help="federation folder (default: examples/heart)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilons", default="0.5,1,3,8,inf")
    parser.add_argument("--sizes", default="",
                        help="comma list of train-size values (training examples per built-in "
                             "site); default: the built-in sites")
    parser.add_argument("--metric", help="the metric the table shows (default: the pack's "
                        "primary metric; --json holds them all)")
    parser.add_argument("--json", type=Path, help="write every run's metrics to this file")
    parser.add_argument("--rounds", type=int, help="override num-server-rounds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--check-ray", action="store_true")
    return parser.parse_args(argv)


def base_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The federation folder's run config with ``--set`` and ``--rounds`` applied."""
    settings = load_federation(args.federation)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key.strip()] = value.strip()
    if args.rounds:
        settings["num-server-rounds"] = args.rounds
    return settings


def point_config(
    settings: dict[str, Any], size: int | None, epsilon: float, seed: int
) -> FederationConfig:
    """The federation at one point of the curve: ``train-size`` (None: the built-in sites),
    ``epsilon`` (``inf``: DP off) and ``seed``. Parsed like a run's config, so the pack's
    measured DP recipe (``dp-recipe``) fills what the folder leaves out when DP is on, and the
    plain defaults stand when it is off."""
    point: dict[str, Any] = {**settings, "seed": seed, "dp": math.isfinite(epsilon)}
    if math.isfinite(epsilon):
        point["epsilon"] = epsilon
    if size is not None:
        point["train-size"] = size
    return FederationConfig.from_run_config(point)


def describe(base: FederationConfig, seeds: int, metric: str) -> str:
    """The table's title: what was trained and what the numbers are (each row names its own
    training settings: with DP on they are the pack's DP recipe where the folder is silent)."""
    pack = get_task(base.task)
    return (
        f"{base.federation} ({pack.name}) {base.strategy}, {base.num_server_rounds} rounds, "
        f"delta {base.delta}, {seeds} seeds; mean per-site test {metric} of the final global "
        "model"
    )


def training(config: FederationConfig) -> str:
    """A row's local training settings, short: batch (and its steps-per-epoch cap), lr, local
    epochs, momentum, clip."""
    settings = TrainSettings.for_pack(config, get_task(config.task))
    clip = f" clip {config.clip_norm:g}" if config.dp else ""
    cap = f" steps/epoch <= {settings.steps_per_epoch}" if settings.steps_per_epoch else ""
    return (f"batch {settings.batch_size}{cap} lr {settings.lr:g} "
            f"epochs {settings.local_epochs} momentum {settings.momentum:g}{clip}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as each simulated node (1 CPU): same float rounding as Ray
    settings = base_settings(args)
    base = FederationConfig.from_run_config(settings)
    if base.strategy != "fedavg":  # the in-process loop aggregates with FedAvg only
        raise ConfigError(
            f"strategy {base.strategy!r}: bench/dp_accuracy.py runs FedAvg (Flower's weighted "
            "mean) in this process; compare strategies under DP with `fedmed generalization "
            "--dp --strategies ...`"
        )
    primary = args.metric or get_task(base.task).primary_metric
    epsilons = [float(e) for e in args.epsilons.split(",")]
    sizes: list[int | None] = [int(n) for n in args.sizes.split(",") if n.strip()] or [None]
    print(describe(base, args.seeds, primary), flush=True)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        if args.check_ray:
            config = point_config(settings, None, 1.0, 0)
            ray, run_id = run_with_ray(config, Path(scratch) / "ray", Path(scratch) / "run")
            direct = run_in_process(config, Path(scratch) / "direct", run_id)
            print(f"in-process: { {s: m[primary] for s, m in direct.items()} }\nray:        {ray}")
        sites = base.site_list(get_task(base.task).site_names(
            Path(base.data_dir) if base.data_dir else None))
        header = (f"{'size':>8} | {'epsilon':>7} | {'mean':>6} | {'sd':>6} | "
                  + " | ".join(f"{s[:11]:>11}" for s in sites) + " |      s | training")
        print(header)
        print("-" * len(header), flush=True)
        for size in sizes:
            for epsilon in epsilons:
                per_seed = []
                started = time.perf_counter()
                for seed in range(args.seeds):
                    config = point_config(settings, size, epsilon, seed)
                    homes = Path(scratch) / f"n{size}-eps{epsilon}-seed{seed}"
                    scores = run_in_process(config, homes)
                    per_seed.append({site: m[primary] for site, m in scores.items()})
                    records.append({"size": size, "epsilon": epsilon, "seed": seed,
                                    "training": training(config), "per_site": scores})
                print(row(size, epsilon, per_seed, sites, time.perf_counter() - started)
                      + f" | {training(config)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"title": describe(base, args.seeds, primary),
                                         "metric": primary, "runs": records}, indent=1))
    return 0


def row(size: int | None, epsilon: float, per_seed: list[dict[str, float]], sites: list[str],
        seconds: float) -> str:
    """One table line: mean over sites (mean ± sd over seeds) and each site's mean."""
    means = [statistics.mean(s.values()) for s in per_seed]
    site_means = " | ".join(f"{statistics.mean(s[site] for s in per_seed):>11.3f}"
                            for site in sites)  # fmt: skip
    sd = statistics.stdev(means) if len(means) > 1 else 0.0
    label = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
    n = "built-in" if size is None else str(size)
    return (f"{n:>8} | {label:>7} | {statistics.mean(means):>6.3f} | {sd:>6.3f} | "
            f"{site_means} | {seconds:>6.0f}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
