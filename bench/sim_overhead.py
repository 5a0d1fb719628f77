"""Simulation overhead: Flower's Simulation Engine vs the same local work done in a loop.

Measures, side by side in one run, for a federation folder (default: the 4-site
heart federation):

- ``engine``: wall time per round of ``fedmed``'s embedded simulation, with engine
  start-up removed by differencing an (R+1)-round and a 1-round run;
- ``local``: the summed compute of the same work without Flower (each site trains
  one round and evaluates, sequentially, in this process).

Both sides train without DP. Prints both and their ratio (goal: ≤ 1.3 after engine
start-up).
Run: ``.venv/bin/python bench/sim_overhead.py [--rounds 10] [--federation examples/ecg]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fedmed.clients.node import HospitalSite
from fedmed.config import FederationConfig, load_federation
from fedmed.generalization import study_site_homes
from fedmed.simulation import run_simulation
from fedmed.tasks import get_task
from fedmed.training import TrainSettings, get_weights

DEFAULT_FEDERATION = Path(__file__).resolve().parents[1] / "examples" / "heart"


def engine_seconds(config: FederationConfig, rounds: int, out: Path) -> float:
    """Wall time of one embedded run, on fresh uncapped site homes (no DP: like ``local``)."""
    homes = out / f"homes-r{rounds}"
    config = replace(config, num_server_rounds=rounds, run_dir=str(out / f"r{rounds}"))
    config = replace(config, dp=False, sites_home=str(homes))
    study_site_homes(config, homes)
    start = time.perf_counter()
    run_simulation(config)
    return time.perf_counter() - start


def local_seconds(config: FederationConfig, rounds: int) -> float:
    """The federation's compute with no engine: every site trains and evaluates, in turn."""
    pack = get_task(config.task)
    names = config.site_list(pack.site_names())
    sites = [HospitalSite.open(config.task, name, None, config.seed) for name in names]
    weights = get_weights(pack.build_model())
    settings = TrainSettings(
        local_epochs=config.local_epochs or pack.default_local_epochs,
        batch_size=config.batch_size or pack.default_batch_size,
        lr=config.lr or pack.default_lr,
    )
    start = time.perf_counter()
    for _ in range(rounds):
        for site in sites:
            site.train(weights, settings)
            site.evaluate(weights)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--federation", type=Path, default=DEFAULT_FEDERATION)
    args = parser.parse_args()
    config = FederationConfig.from_run_config(load_federation(args.federation))
    with tempfile.TemporaryDirectory() as tmp:
        one = engine_seconds(config, 1, Path(tmp))
        many = engine_seconds(config, args.rounds + 1, Path(tmp))
    per_round_engine = (many - one) / args.rounds
    per_round_local = local_seconds(config, args.rounds) / args.rounds
    print(f"engine start-up + 1 round: {one:.1f} s")
    print(f"engine per round (start-up removed): {per_round_engine:.3f} s")
    print(f"federation: {config.federation} ({config.task}), {args.rounds} rounds")
    print(f"local compute per round (all sites, sequential): {per_round_local:.3f} s")
    print(f"ratio engine/local: {per_round_engine / per_round_local:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
