"""Resume bookkeeping (fedmed.server.resume): where a stopped run stands, round numbering,
which recorded settings a resumed run must match."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.common import ndarrays_to_parameters
from flwr.server.client_manager import SimpleClientManager
from flwr.server.strategy import FedAvg

from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.outputs import RunDirectory
from fedmed.server.app import open_run
from fedmed.server.resume import RoundOffset, find_resume_point
from fedmed.tasks import get_task


def _weights(value: float) -> list[np.ndarray]:
    return [np.full((2, 3), value, np.float32), np.full(3, value, np.float32)]


def test_a_new_run_has_no_resume_point(tmp_path: Path) -> None:
    assert find_resume_point(tmp_path / "run") is None
    RunDirectory(tmp_path / "run", {"run-id": "r-1"})
    assert find_resume_point(tmp_path / "run") is None  # metrics but no checkpoint yet


def test_resume_point_is_the_latest_checkpoint_and_keeps_the_run_id(tmp_path: Path) -> None:
    run_dir = RunDirectory(tmp_path / "run", {"run-id": "r-1"})
    for server_round in (1, 2, 3):
        run_dir.record_fit(server_round, {"a": {"num-examples": 5}})
        run_dir.record_privacy("a", {"epsilon": 0.1 * server_round, "rounds_joined": server_round})
        if server_round < 3:  # round 3 was under way when the coordinator stopped
            run_dir.save_checkpoint(server_round, _weights(server_round))
    point = find_resume_point(tmp_path / "run")
    assert point is not None
    assert point.round == 2 and point.run_id == "r-1"
    assert all(np.array_equal(a, b) for a, b in zip(point.weights, _weights(2), strict=True))
    assert [r["round"] for r in point.trimmed_document()["rounds"]] == [1, 2]
    assert point.participation() == {"a": {"rounds_joined": 3, "rounds_refused": 0}}


class RoundsSeen(FedAvg):
    """FedAvg that remembers which round numbers it was asked about."""

    def __init__(self) -> None:
        super().__init__(initial_parameters=ndarrays_to_parameters(_weights(0)))
        self.rounds: list[int] = []

    def evaluate(self, server_round, parameters):  # noqa: ANN001, ANN201
        self.rounds.append(server_round)
        return super().evaluate(server_round, parameters)

    def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
        self.rounds.append(server_round)
        return super().aggregate_fit(server_round, results, failures)


def test_round_offset_renumbers_the_workflows_rounds() -> None:
    inner = RoundsSeen()
    shifted = RoundOffset(inner, 4)
    manager = SimpleClientManager()
    assert shifted.initialize_parameters(manager) is not None
    shifted.evaluate(1, ndarrays_to_parameters(_weights(1)))
    shifted.aggregate_fit(2, [], [])
    assert inner.rounds == [5, 6]


def test_a_run_recorded_before_a_setting_existed_resumes_at_its_default(tmp_path: Path) -> None:
    """A setting added after the run started (here ``explain``) counts at its default; a
    setting that really differs is still refused."""
    config = FederationConfig(task="heart", num_server_rounds=3)
    recorded = {k: v for k, v in config.to_run_config().items() if k != "explain"}
    run_dir = RunDirectory(tmp_path / "run", {"run-id": "r-1", "config": recorded})
    run_dir.record_fit(1, {"a": {"num-examples": 5}})
    run_dir.save_checkpoint(1, _weights(1))
    pack = get_task("heart")
    _, point = open_run(tmp_path / "run", config, ["a"], pack)
    assert point is not None and point.run_id == "r-1" and point.round == 1
    with pytest.raises(ConfigError, match="other settings"):
        open_run(tmp_path / "run", dataclasses.replace(config, explain=False), ["a"], pack)
