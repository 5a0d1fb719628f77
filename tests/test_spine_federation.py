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
    repo: Path, tmp_path: Path, isolated_state: Path, capfd: pytest.CaptureFixture[str],
    strategy: str, rounds: int,
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
    # A quiet console (issue 17): fedmed's round lines and tables; Flower's and Ray's notices
    # are in the run's log file instead.
    console = "".join(capfd.readouterr())
    assert f"round {rounds}/{rounds}" in console and "final global model" in console
    for noise in ("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "FutureWarning",
                  "No fit_metrics_aggregation_fn provided", "No evaluate_metrics_aggregation_fn"):
        assert noise not in console, console
    log = (out / "simulation.log").read_text(encoding="utf-8")
    assert log.count("No fit_metrics_aggregation_fn provided") == 1, log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == strategy and metrics["config"]["strategy"] == strategy
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, rounds + 1))
    stamps = [r["aggregated_at"] for r in metrics["rounds"]]  # read by the benchmarks
    assert len(stamps) == rounds and stamps == sorted(stamps)
    assert sorted(metrics["final"]["per_site"]) == SITES
    for site in SITES:
        assert set(metrics["final"]["per_site"][site]) >= {"accuracy", "auc"}
        assert metrics["rounds"][-1]["fit"][site]["num-examples"] > 0
        assert metrics["privacy"][site]["rounds_joined"] == rounds
        assert metrics["rounds"][-1]["fit"][site]["refused"] == 0
    mean = metrics["final"]["mean"]["accuracy"]
    per_site = [metrics["final"]["per_site"][s]["accuracy"] for s in SITES]
    assert mean == pytest.approx(sum(per_site) / len(per_site))
    assert mean > 0.6  # a few rounds already beat the majority class at most sites
    assert {p.name for p in (out / "plots").glob("*.png")} >= {
        "accuracy_per_round.png",
        "auc_per_round.png",
        "final_per_site.png",
    }
    # Each site explained the final model with SHAP into its own site home (issue 18).
    for site in SITES:
        explained = metrics["explanations"][site]
        assert explained["count"] == 5 and "error" not in explained
        folder = Path(explained["folder"])
        home = isolated_state / "sites" / "heart" / site
        assert folder == home / "runs" / metrics["run-id"] / "explanations"
        assert sorted(p.name for p in folder.glob("*shap*.png")) == [
            f"shap-importance-{site}.png", *(f"shap-waterfall-{site}-{i}.png" for i in range(4))]
    assert not list(out.rglob("*shap*"))  # the pictures show patients: never in the run dir
    # The final model is the last round's checkpoint, and it loads into the pack's model.
    pack = get_task("heart")
    torch.manual_seed(0)  # the coordinator's initial model (seed 0 in examples/heart)
    initial = [v.numpy().copy() for v in pack.build_model().state_dict().values()]
    model = pack.build_model()
    model.load_state_dict(torch.load(out / "model.pt"))
    trained = [v.numpy() for v in model.state_dict().values()]
    assert not all(np.allclose(a, b) for a, b in zip(initial, trained, strict=True))  # it moved
    last = load_checkpoint(out / "checkpoints" / f"round-{rounds:04d}.npz")
    assert all(
        np.allclose(a, b.numpy()) for a, b in zip(last, model.state_dict().values(), strict=True)
    )
