"""bench/dp_accuracy.py refuses what its in-process federation would silently not do."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from fedmed.errors import ConfigError


def test_a_strategy_other_than_fedavg_is_refused_not_mislabelled(repo: Path) -> None:
    """Its loop aggregates with FedAvg; a run asking for FedAdam once printed FedAvg's scores
    under a FedAdam title."""
    bench = runpy.run_path(str(repo / "bench" / "dp_accuracy.py"))
    with pytest.raises(ConfigError, match="strategy 'fedadam': bench/dp_accuracy.py runs FedAvg"):
        bench["main"](["--federation", str(repo / "examples" / "heart"),
                       "--set", "strategy=fedadam", "--epsilons", "1"])  # fmt: skip
