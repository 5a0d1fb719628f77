"""Resuming a run after its coordinator stopped: the last checkpoint, the rounds left.

A coordinator that crashes or is restarted loses its ServerApp; the run directory
keeps ``metrics.json`` (rewritten every round) and ``checkpoints/round-NNNN.npz``
(the global weights after each aggregated round). Submitting the same run again with
the same run directory continues it:

- from the weights of the latest checkpoint, with the rounds after it only
  (:class:`RoundOffset` numbers them k+1 … N, so fit configs, metrics, the sites'
  ledgers and the audit log see the true round numbers);
- under the same run id (sites account the resumed rounds to the same run);
- with ``metrics.json`` as it was up to round k (a round that was under way when the
  coordinator stopped is dropped and trained again — sites record that release too,
  because their data were really used twice).

Server-side optimiser state (FedAdam/FedYogi moments) is not checkpointed and starts
afresh; FedAvg and FedProx resume exactly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from fedmed.outputs import load_checkpoint

CHECKPOINT = re.compile(r"^round-(\d+)\.npz$")


@dataclass(frozen=True)
class ResumePoint:
    """Where an interrupted run stands."""

    round: int
    weights: list[np.ndarray]
    document: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.document["run-id"])

    def trimmed_document(self) -> dict[str, Any]:
        """``metrics.json`` without rounds after the checkpoint (they are trained again)."""
        document = dict(self.document)
        document["rounds"] = [r for r in document.get("rounds", []) if r["round"] <= self.round]
        document.pop("stopped", None)
        return document

    def participation(self) -> dict[str, dict[str, int]]:
        """Each site's joined/refused round counts so far (they keep counting)."""
        counts: dict[str, dict[str, int]] = {}
        for site, summary in self.document.get("privacy", {}).items():
            counts[site] = {
                key: int(summary.get(key, 0)) for key in ("rounds_joined", "rounds_refused")
            }
        return counts


def find_resume_point(root: Path) -> ResumePoint | None:
    """The run at ``root`` if it has a checkpoint and its metrics; None for a new run."""
    folder = Path(root) / "checkpoints"
    metrics = Path(root) / "metrics.json"
    if not folder.is_dir() or not metrics.is_file():
        return None
    rounds = sorted(
        (int(m.group(1)), path)
        for path in folder.iterdir()
        if (m := CHECKPOINT.match(path.name))
    )
    if not rounds:
        return None
    last, path = rounds[-1]
    document = json.loads(metrics.read_text(encoding="utf-8"))
    return ResumePoint(last, load_checkpoint(path), document)


class RoundOffset(Strategy):
    """Shift the workflow's round numbers by ``offset`` for the wrapped strategy.

    Flower's ``DefaultWorkflow`` always counts rounds from 1; a resumed run asks it for
    the remaining rounds only and this wrapper makes round 1 of the workflow round
    ``offset + 1`` of the run.
    """

    def __init__(self, inner: Strategy, offset: int) -> None:
        self.inner = inner
        self.offset = offset

    def __repr__(self) -> str:
        return f"RoundOffset({self.inner!r}, +{self.offset})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.inner.configure_fit(server_round + self.offset, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        return self.inner.aggregate_fit(server_round + self.offset, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(
            server_round + self.offset, parameters, client_manager
        )

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return self.inner.aggregate_evaluate(server_round + self.offset, results, failures)

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return self.inner.evaluate(server_round + self.offset, parameters)
