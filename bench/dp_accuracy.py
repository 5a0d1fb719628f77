"""Accuracy against ε: the heart federation with per-site DP-SGD, over several seeds.

Usage::

    python bench/dp_accuracy.py [--seeds 5] [--epsilons 0.5,1,3,8,inf] [--rounds 20]
                                [--set KEY=VALUE ...] [--check-ray]

For each ε (``inf`` = DP off) and seed it runs FedAvg over the four hospitals and
prints the mean over sites of the final global model's test accuracy (mean ± sd
over seeds) and each site's mean.

The federation runs in this process, without Ray, but through the same code as a
real run: each site is a :class:`fedmed.clients.hospital.HospitalClient` whose ``fit``
goes through the site's policy check, DP-SGD and ledger
(:mod:`fedmed.clients.private_round`), with the coordinator's own per-round
instructions (:func:`fedmed.server.app.fit_config_fn`) and Flower's FedAvg
weighted mean (``flwr.server.strategy.aggregate``). ``--check-ray`` runs one
configuration both ways and prints both, to show they agree.

Every run gets fresh site homes in a temporary folder with an unbounded budget
(``epsilon = inf``): this measures utility at a given ε, not budget enforcement.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from flwr.server.strategy.aggregate import aggregate

from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig, load_federation
from fedmed.deid.sitekey import SECRET_RELPATH
from fedmed.privacy.policy import Policy
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.training.loop import get_weights

FEDERATION = Path(__file__).resolve().parents[1] / "examples" / "heart"


def open_unbounded_home(root: Path, site: str, task: str, seed: int) -> None:
    """A fresh site home whose policy has no ε cap (so DP-off runs are allowed too).

    Its site secret — from which the node draws DP noise and sampling — is derived from
    ``seed`` and the site, so a seed's numbers are the same in every run of this bench and
    in both halves of ``--check-ray`` (a real site's secret is random)."""
    SiteHome.open(root, site, task)
    secret = root / SECRET_RELPATH
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(hashlib.sha256(f"dp-accuracy|{site}|{seed}".encode()).hexdigest() + "\n")
    secret.chmod(0o600)
    (root / "policy.toml").write_text(
        Policy(epsilon=math.inf, min_noise_multiplier=0.0, allowed_tasks=(task,)).to_toml()
    )


def run_in_process(config: FederationConfig, homes: Path, run_id: str = "") -> dict[str, float]:
    """Final global model's primary metric per site, FedAvg over HospitalClient.fit.

    ``run_id`` (default ``bench-seed<seed>``): the run the sites are told; each site draws
    its DP noise from its secret and the run id, so ``--check-ray`` passes the Ray run's."""
    pack = get_task(config.task)
    sites = config.site_list(pack.site_names())
    clients = []
    for site in sites:
        open_unbounded_home(homes / site, site, config.task, config.seed)
        clients.append(HospitalClient(HospitalSite.open(config.task, site, None, config.seed),
                                      homes / site))
    torch.manual_seed(config.seed)
    weights = get_weights(pack.build_model())
    instructions = fit_config_fn(config, pack, run_id=run_id or f"bench-seed{config.seed}")
    for server_round in range(1, config.num_server_rounds + 1):
        replies = [client.fit(weights, instructions(server_round)) for client in clients]
        accepted = [(w, n) for w, n, metrics in replies if not metrics["refused"]]
        if len(accepted) < len(clients):
            raise RuntimeError(f"round {server_round}: a site refused: {replies}")
        weights = aggregate(accepted)
    return {c.site.name: c.site.evaluate(weights)[pack.primary_metric] for c in clients}


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
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epsilons", default="0.5,1,3,8,inf")
    parser.add_argument("--rounds", type=int, help="override num-server-rounds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--check-ray", action="store_true")
    return parser.parse_args(argv)


def base_config(args: argparse.Namespace) -> FederationConfig:
    settings = load_federation(FEDERATION)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key.strip()] = value.strip()
    if args.rounds:
        settings["num-server-rounds"] = args.rounds
    return FederationConfig.from_run_config(settings)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as each simulated node (1 CPU): same float rounding as Ray
    base = base_config(args)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    print(
        f"heart FedAvg, {base.num_server_rounds} rounds, batch {base.batch_size}, lr {base.lr}, "
        f"clip {base.clip_norm}, delta {base.delta}, {args.seeds} seeds; "
        "mean per-site test accuracy of the final global model"
    )
    with tempfile.TemporaryDirectory() as scratch:
        if args.check_ray:
            config = dataclasses.replace(base, epsilon=1.0, seed=0)
            ray, run_id = run_with_ray(config, Path(scratch) / "ray", Path(scratch) / "run")
            direct = run_in_process(config, Path(scratch) / "direct", run_id)
            print(f"in-process: {direct}\nray:        {ray}")
        header = f"{'epsilon':>8} | {'mean acc':>8} | {'sd':>6} | " + " | ".join(
            f"{s:>11}" for s in base.site_list(get_task(base.task).site_names())
        )
        print(header)
        print("-" * len(header))
        for epsilon in epsilons:
            per_seed = []
            for seed in range(args.seeds):
                config = dataclasses.replace(
                    base, seed=seed, dp=math.isfinite(epsilon),
                    epsilon=epsilon if math.isfinite(epsilon) else 1.0,
                )
                homes = Path(scratch) / f"eps{epsilon}-seed{seed}"
                per_seed.append(run_in_process(config, homes))
            means = [statistics.mean(s.values()) for s in per_seed]
            sites = sorted(per_seed[0])
            site_means = " | ".join(
                f"{statistics.mean(s[site] for s in per_seed):>11.3f}" for site in sites
            )
            sd = statistics.stdev(means) if len(means) > 1 else 0.0
            label = "inf" if math.isinf(epsilon) else f"{epsilon:g}"
            print(f"{label:>8} | {statistics.mean(means):>8.3f} | {sd:>6.3f} | {site_means}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
