"""``examples/ecg-denoise`` end to end through Flower's Simulation Engine, DP on (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

from fedmed.cli import main

SITES = ["boston", "lyon"]


def test_denoise_federation_runs_with_dp(repo: Path, tmp_path: Path) -> None:
    """Two sites, two rounds of DP-SGD under the default policy (no site init needed)."""
    out = tmp_path / "run"
    code = main(
        [
            "run",
            str(repo / "examples" / "ecg-denoise"),
            "--rounds",
            "2",
            "--sites-home",
            str(tmp_path / "homes"),
            "--out",
            str(out),
            "--set",
            "sites=" + ",".join(SITES),
            "--set",
            "local-epochs=1",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert sorted(metrics["final"]["per_site"]) == SITES
    for site in SITES:
        scores = metrics["final"]["per_site"][site]
        assert set(scores) >= {"snr_improvement_db", "rmse"}
        assert 0 < metrics["privacy"][site]["epsilon"] <= 1.0 + 1e-6  # the run's target
    assert (out / "plots" / "snr_improvement_db_per_round.png").is_file()
    assert (out / "model.pt").is_file()
