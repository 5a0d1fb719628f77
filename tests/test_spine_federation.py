"""End to end through Flower's real Simulation Engine (Ray backend): no mocks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmed.cli import main
from fedmed.outputs import load_checkpoint
from fedmed.tasks import get_task

SITES = ["cleveland", "hungary", "switzerland", "va"]


@pytest.mark.parametrize(("strategy", "rounds"), [("fedavg", 3), ("fedadam", 2)])
def test_heart_federation_writes_a_complete_run_directory(
    repo: Path, tmp_path: Path, strategy: str, rounds: int
) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(repo / "examples" / "heart"),
            "--rounds",
            str(rounds),
            "--strategy",
            strategy,
            "--out",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, rounds + 1))
    stamps = [r["aggregated_at"] for r in metrics["rounds"]]  # read by the benchmarks
    assert len(stamps) == rounds and stamps == sorted(stamps)
    assert sorted(metrics["final"]["per_site"]) == SITES
    for site in SITES:
        assert set(metrics["final"]["per_site"][site]) >= {"accuracy", "auc"}
        assert metrics["rounds"][-1]["fit"][site]["num-examples"] > 0
    mean = metrics["final"]["mean"]["accuracy"]
    per_site = [metrics["final"]["per_site"][s]["accuracy"] for s in SITES]
    assert mean == pytest.approx(sum(per_site) / len(per_site))
    assert mean > 0.6  # a few rounds already beat the majority class at most sites
    assert {p.name for p in (out / "plots").glob("*.png")} >= {
        "accuracy_per_round.png",
        "auc_per_round.png",
        "final_per_site.png",
    }
    # The final model is the last round's checkpoint, and it loads into the pack's model.
    pack = get_task("heart")
    model = pack.build_model()
    model.load_state_dict(torch.load(out / "model.pt"))
    last = load_checkpoint(out / "checkpoints" / f"round-{rounds:04d}.npz")
    assert all(
        np.allclose(a, b.numpy()) for a, b in zip(last, model.state_dict().values(), strict=True)
    )
