"""The run directory: what a finished (or interrupted) run leaves behind.

Layout: ``metrics.json`` (rewritten after every round, so an interrupted run loses nothing
already measured), ``checkpoints/round-NNN.npz`` (global weights after each round),
``model.pt`` (final global model, a state dict), ``plots/*.png``. Keys other tools read
(docs/architecture.md § Node–coordinator contract): ``final.per_site.<site>.<metric>``,
``final.mean.<metric>``, ``privacy.<site>.epsilon|delta``, ``rounds[]`` (each with the
wall-clock ``aggregated_at`` and the seconds each exchange with the nodes took,
``exchange_seconds``). With client-level DP, ``client_privacy.epsilon|delta`` sits
beside ``privacy``; a run the coordinator stopped early has ``stopped.round|reason``.
``status`` is ``running`` while a deployed run's ServerApp works, then how it ended
(``completed``, ``stopped: <reason>``, ``failed``, or ``interrupted`` when the coordinator found
its ServerApp process dead: :mod:`fedmed.deploy.runs`).
``explanations.<site>`` says where each site holds its explanations of the final model
(``round``, ``count``, ``folder``, ``error``; the files stay at the site,
:mod:`fedmed.explain.outcome`), and ``report.md`` is the run's report for people
(:mod:`fedmed.server.run_report`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINTS_KEPT = 3
# Per-site scores of one model: {site: {metric: value}} (``final.per_site`` of metrics.json).
Scores = dict[str, dict[str, float]]


def seconds_per_round(document: Mapping[str, Any]) -> float:
    """Mean wall time between successive aggregations of a run (start-up excluded)."""
    stamps = [r["aggregated_at"] for r in document.get("rounds", []) if "aggregated_at" in r]
    if len(stamps) < 2:
        raise ValueError("fewer than two aggregated rounds recorded")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def mean_over_sites(per_site: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean of each metric over sites (FLamby's convention), NaN ignored."""
    metrics = sorted({m for scores in per_site.values() for m in scores})
    means: dict[str, float] = {}
    for metric in metrics:
        values = [float(s[metric]) for s in per_site.values() if metric in s]
        finite = [v for v in values if not math.isnan(v)]
        means[metric] = sum(finite) / len(finite) if finite else float("nan")
    return means


def json_safe(value: Any) -> Any:
    """NaN/inf become null: strict JSON readers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def format_epsilon(value: float | None, missing: str = "unbounded") -> str:
    """ε as fedmed prints it: three decimals, ``unbounded`` for ∞ (a budget of ``inf``, or
    a release without DP noise). ``None`` is ``missing``: by default ``unbounded`` too,
    since :func:`json_safe` writes ∞ as null."""
    if value is None:
        return missing
    return "unbounded" if math.isinf(float(value)) else f"{value:.3f}"



def write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    """Write JSON through a temporary file and rename, so readers never see half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(document), indent=2, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def write_bytes_durable(path: Path, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` and make it survive a power cut.

    Write to a temporary file, fsync it, rename over ``path``, fsync the folder: after
    return the new content is on disk, and a crash at any point leaves either the old
    or the new file, never a mix. Privacy ledgers and audit heads rely on this — an
    ε that was spent must never be lost because the machine rebooted.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """fsync a directory so a rename or a new file in it is durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunDirectory:
    """Accumulates a run's metrics and writes them to ``root`` as they arrive."""

    def __init__(self, root: Path, header: Mapping[str, Any]) -> None:
        self.root = Path(root)
        (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.document: dict[str, Any] = {
            **header,
            "rounds": [],
            "final": {"per_site": {}, "mean": {}},
            "privacy": {},
        }
        self.flush()

    @classmethod
    def continued(cls, root: Path, document: Mapping[str, Any]) -> RunDirectory:
        """A run directory that goes on from ``document`` (a resumed run's metrics so far)."""
        run_dir = cls.__new__(cls)
        run_dir.root = Path(root)
        run_dir.document = dict(document)
        run_dir.flush()
        return run_dir

    def _round(self, server_round: int) -> dict[str, Any]:
        for entry in self.document["rounds"]:
            if entry["round"] == server_round:
                return entry
        entry = {"round": server_round, "per_site": {}, "mean": {}, "fit": {}, "events": []}
        self.document["rounds"].append(entry)
        return entry

    def record_fit(self, server_round: int, per_site: Mapping[str, Mapping[str, Any]]) -> None:
        entry = self._round(server_round)
        entry["fit"] = dict(per_site)
        entry["aggregated_at"] = round(time.time(), 3)  # for seconds_per_round
        self.flush()

    def record_exchange(self, server_round: int, kind: str, seconds: float) -> None:
        """How long the coordinator waited for the nodes' replies of one exchange (``fit``
        with all its SecAgg+ stages, ``evaluate``): ``rounds[].exchange_seconds.<kind>``,
        written with the round's next record. What a deployed round's time is made of:
        ``bench/deploy_overhead.py``."""
        self._round(server_round).setdefault("exchange_seconds", {})[kind] = round(seconds, 3)

    def record_event(self, server_round: int, event: Mapping[str, Any]) -> None:
        """A failure, refusal or rejected update, kept beside the round's metrics."""
        self._round(server_round)["events"].append(dict(event))
        self.flush()

    def record_evaluation(
        self, server_round: int, per_site: Mapping[str, Mapping[str, float]]
    ) -> dict[str, float]:
        entry = self._round(server_round)
        entry["per_site"] = {site: dict(scores) for site, scores in per_site.items()}
        entry["mean"] = mean_over_sites(per_site)
        self.document["final"] = {"per_site": entry["per_site"], "mean": entry["mean"]}
        self.flush()
        return entry["mean"]

    def record_privacy(self, site: str, summary: Mapping[str, Any]) -> None:
        """Sample-level DP of ``site``: ``epsilon`` (all its releases so far), ``delta``, ..."""
        self.document["privacy"][site] = dict(summary)
        self.flush()

    def record_client_privacy(self, summary: Mapping[str, Any]) -> None:
        """Client-level DP at the coordinator (``client_privacy``: epsilon, delta, ...)."""
        self.document["client_privacy"] = dict(summary)
        self.flush()

    def record_explanations(self, site: str, summary: Mapping[str, Any]) -> None:
        """Where ``site`` holds its explanations of the final model (``explanations.<site>``).

        Only what the site reported (count, folder, error): the files themselves never
        reach the coordinator.
        """
        self.document.setdefault("explanations", {})[site] = dict(summary)
        self.flush()

    def record_stop(self, server_round: int, reason: str) -> None:
        """The run ended early (e.g. too many sites refused): ``stopped`` says when and why."""
        self.document["stopped"] = {"round": server_round, "reason": reason}
        self.flush()

    def save_checkpoint(self, server_round: int, weights: Sequence[np.ndarray]) -> Path:
        """Global weights after ``server_round``; older checkpoints beyond the last 3 are pruned."""
        folder = self.root / "checkpoints"
        path = folder / f"round-{server_round:04d}.npz"
        tmp = folder / f".round-{server_round:04d}.tmp.npz"
        np.savez(tmp, *weights)
        os.replace(tmp, path)
        for old in sorted(folder.glob("round-*.npz"))[:-CHECKPOINTS_KEPT]:
            old.unlink()
        return path

    def flush(self) -> None:
        write_json_atomic(self.root / "metrics.json", self.document)


def load_checkpoint(path: Path) -> list[np.ndarray]:
    """Weights saved by :meth:`RunDirectory.save_checkpoint`, in order."""
    with np.load(path) as archive:
        return [archive[f"arr_{i}"] for i in range(len(archive.files))]
