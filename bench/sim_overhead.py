"""Simulation overhead: Flower's Simulation Engine vs the same local work done in a loop.

Measures, side by side in one run, for a federation folder (default: the 4-site
heart federation):

- ``engine``: wall time per round of ``fedmed``'s embedded simulation — the mean gap
  between successive aggregations in one (R+1)-round run's ``metrics.json``, so engine
  start-up is excluded (differencing two runs' totals was swamped by start-up jitter
  on a shared machine);
- ``local``: the summed compute of the same work without Flower (each site trains
  one round and evaluates, sequentially, in this process).

Both sides train without DP. Prints both and their ratio (goal: ≤ 1.3 after engine
start-up).
Run: ``.venv/bin/python bench/sim_overhead.py [--rounds 10] [--federation examples/ecg]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fedmed.clients.node import HospitalSite
from fedmed.config import FederationConfig, load_federation
from fedmed.outputs import seconds_per_round
from fedmed.simulation import run_simulation
from fedmed.studies.generalization import study_site_homes
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, get_weights

DEFAULT_FEDERATION = Path(__file__).resolve().parents[1] / "examples" / "heart"


def engine_seconds_per_round(config: FederationConfig, rounds: int, out: Path) -> float:
    """Seconds per round of one embedded run on fresh uncapped site homes (no DP, like
    ``local``), between the first and the last aggregation."""
    homes = out / "homes"
    config = replace(config, num_server_rounds=rounds + 1, run_dir=str(out / "run"))
    config = replace(config, dp=False, sites_home=str(homes))
    study_site_homes(config, homes)
    run_dir = run_simulation(config)
    return seconds_per_round(json.loads((run_dir / "metrics.json").read_text()))


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
    # dp-recipe none: the folder's own training settings (as when the docs' figures were
    # measured, before fedmed.dp_recipes); this bench times the engine, not the recipe.
    settings = {**load_federation(args.federation), "dp-recipe": "none"}
    config = FederationConfig.from_run_config(settings)
    with tempfile.TemporaryDirectory() as tmp:
        per_round_engine = engine_seconds_per_round(config, args.rounds, Path(tmp))
    per_round_local = local_seconds(config, args.rounds) / args.rounds
    print(f"engine per round (start-up excluded): {per_round_engine:.3f} s")
    print(f"federation: {config.federation} ({config.task}), {args.rounds} rounds")
    print(f"local compute per round (all sites, sequential): {per_round_local:.3f} s")
    print(f"ratio engine/local: {per_round_engine / per_round_local:.2f}x (goal <= 1.3x)")


if __name__ == "__main__":
    main()
