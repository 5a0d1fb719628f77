"""What a finished run directory says about its run and the model it released, checked.

:func:`read_run` opens ``<run>/metrics.json`` (docs/architecture.md § Node–coordinator
contract, the run directory) and the coordinator's signed audit log
``<run>/audit/coordinator.jsonl``. The log must verify and belong to the run; the model
is released under the log's last ``run-end`` entry (or its last ``round`` entry, for a run
whose coordinator died before signing the end), and ``model.pt`` must be the model that
entry names (its ``model_sha256``) — a registered model's tags vouch for it, so a model the
log never released is refused rather than registered.

The names written to the tracking store are defined here, once, and read back here too
(:func:`provenance_from_tags`), so ``fedmed models list`` never parses a format that
another module writes:

- metrics, step = round: ``eval/<site>/<metric>`` and ``eval/mean/<metric>`` (the pack's
  scores on each site's test split), ``fit/<site>/<key>`` (the numeric fields of each
  site's fit reply: ``train-loss``, ``num-examples``, ``steps``, ``update-norm``,
  ``refused``), ``epsilon/<site>`` (the site's ε after the round, over every release its
  ledger holds — the figure its budget is checked against);
- tags of the run and of the registered model version: ``epsilon.<site>``,
  ``delta.<site>``, ``mechanism.<site>``, ``accountant.<site>``, ``audit.entry``,
  ``audit.seq``, ``audit.hash``, ``audit.key`` (the coordinator's key fingerprint),
  ``model.sha256``, ``fedmed.run_id``, ``fedmed.federation``, ``fedmed.task``,
  ``fedmed.status``, and with client-level DP ``client_epsilon`` and ``client_delta``.
"""

from __future__ import annotations

import calendar
import json
import math
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmed.audit.verify import verify_log
from fedmed.outputs import format_epsilon
from fedmed.server.app import COORDINATOR_LOG
from fedmed.server.run_report import COMPLIANCE_REPORT, REPORT_FILE
from fedmed.tasks.base import fingerprint_arrays
from fedmed.tracking import TrackingError

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.pt"
# Logged as they are, when present: the record for tools, the reports for people.
ARTIFACT_FILES = (METRICS_FILE, REPORT_FILE, COMPLIANCE_REPORT, "report.json")
# Logged as folders: the plots, and the signed log the provenance tags point into.
ARTIFACT_FOLDERS = ("plots", str(COORDINATOR_LOG.parent))
RELEASE_KINDS = ("run-end", "round")
COMPLETED = "completed"
RUN_ID_TAG = "fedmed.run_id"
# Fit-reply fields that are identities or the privacy mechanism, not per-round measurements
# (ε has its own metric; σ, q, clip and δ are in the mechanism tags).
NOT_FIT_METRICS = frozenset(
    {"epsilon", "delta", "epsilon-budget", "noise-multiplier", "sample-rate", "clip-norm"}
)


@dataclass(frozen=True)
class ReleaseHead:
    """The coordinator audit-log entry the final model was released under."""

    entry: str  # "run-end", or "round" when the log has no run-end after the last round
    seq: int
    hash: str
    key: str  # fingerprint of the coordinator's signing key
    model_sha256: str
    time_ms: int


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    step: int
    timestamp_ms: int


@dataclass(frozen=True)
class RunRecord:
    """A finished run directory, read and checked against the coordinator's log."""

    root: Path
    document: dict[str, Any]
    release: ReleaseHead | None  # None: no round was ever aggregated
    status: str  # the run-end entry's status ("completed", "failed", "stopped: ...")
    started_ms: int | None

    @property
    def run_id(self) -> str:
        return str(self.document["run-id"])

    @property
    def federation(self) -> str:
        return str(self.document.get("federation", "federation"))

    @property
    def model(self) -> Path | None:
        """``model.pt`` when it exists (it was checked against the log by :func:`read_run`)."""
        path = self.root / MODEL_FILE
        return path if path.is_file() and self.release is not None else None

    @property
    def releasable(self) -> bool:
        """Whether the final model is registered: only a completed run releases a model."""
        return self.model is not None and self.status == COMPLETED


def read_run(run_dir: Path) -> RunRecord:
    """Read ``run_dir`` and check it against its coordinator log (see the module docstring)."""
    root = Path(run_dir)
    metrics = root / METRICS_FILE
    if not root.is_dir():
        raise TrackingError(f"run directory not found: {root}")
    try:
        document = json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TrackingError(f"{metrics}: not a run's metrics ({exc})") from exc
    if not isinstance(document, dict) or "run-id" not in document:
        raise TrackingError(f"{metrics}: not a run's metrics (no run-id)")
    log = root / COORDINATOR_LOG
    check = verify_log(log)
    if not check.ok:
        raise TrackingError(f"{log}: {check.describe()}; refusing to track this run")
    run_id = str(document["run-id"])
    entries = check.entries
    starts = [e for e in entries if e["kind"] == "run-start" and e["payload"].get("run") == run_id]
    if not starts:
        raise TrackingError(f"{log}: no run-start entry for run {run_id}; not this run's log")
    releases = [e for e in entries if e["kind"] in RELEASE_KINDS]
    release = _release_head(releases[-1], check.key) if releases else None
    ends = [e["payload"] for e in entries if e["kind"] == "run-end"]
    record = RunRecord(
        root=root,
        document=document,
        release=release,
        status=str(ends[-1].get("status", "")) if ends else "",
        started_ms=_epoch_ms(starts[0]["time"]),
    )
    if record.model is not None:
        _check_model(record.model, record.release)
    return record


def _release_head(entry: Mapping[str, Any], key: str) -> ReleaseHead:
    return ReleaseHead(
        entry=str(entry["kind"]),
        seq=int(entry["seq"]),
        hash=str(entry["hash"]),
        key=key,
        model_sha256=str(entry["payload"].get("model_sha256", "")),
        time_ms=_epoch_ms(entry["time"]),
    )


def _epoch_ms(stamp: str) -> int:
    """An audit entry's UTC time (``2026-12-04T18:07:24Z``) in milliseconds since the epoch."""
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) * 1000


def _check_model(path: Path, release: ReleaseHead | None) -> None:
    """``model.pt`` must be the model the release entry names (same fingerprint as the
    coordinator signs: :func:`fedmed.tasks.base.fingerprint_arrays` over the state dict)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        digest = fingerprint_arrays([value.numpy() for value in state.values()])
    except (OSError, RuntimeError, pickle.UnpicklingError, AttributeError) as exc:
        raise TrackingError(f"{path}: not a model state dict ({first_line(exc)})") from exc
    if release is None or digest != release.model_sha256:
        signed = release.model_sha256 if release else "none"
        raise TrackingError(
            f"{path}: SHA-256 {digest} is not the model the coordinator's log released "
            f"({signed}); refusing to track or register it"
        )


def first_line(exc: BaseException) -> str:
    """A library's error in one line (torch's and MLflow's messages run over several)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_params(document: Mapping[str, Any]) -> dict[str, str]:
    """The run's configuration (``config`` of metrics.json) and fedmed's version, as params."""
    params = {key: _text(value) for key, value in document.get("config", {}).items()}
    params["fedmed-version"] = str(document.get("fedmed-version", ""))
    return params


def round_metrics(record: RunRecord) -> list[MetricPoint]:
    """Every round's per-site scores, fit measurements and ε, step = round; each timestamp is
    the round's aggregation time (the run's start for a round without one)."""
    points: list[MetricPoint] = []
    for entry in record.document.get("rounds", []):
        step = int(entry["round"])
        stamp = entry.get("aggregated_at")
        when = int(stamp * 1000) if stamp is not None else record.started_ms or 0
        values: dict[str, Any] = {}
        for site, scores in entry.get("per_site", {}).items():
            values |= {f"eval/{site}/{metric}": v for metric, v in scores.items()}
        values |= {f"eval/mean/{metric}": v for metric, v in entry.get("mean", {}).items()}
        for site, reply in entry.get("fit", {}).items():
            values |= {
                f"fit/{site}/{key}": v
                for key, v in reply.items()
                if key not in NOT_FIT_METRICS and not key.startswith("audit-")
            }
            if "epsilon" in reply:  # null is ∞ here (json_safe): a release without noise
                epsilon = reply["epsilon"]
                values[f"epsilon/{site}"] = math.inf if epsilon is None else epsilon
        points += [  # null elsewhere is NaN (e.g. an AUC on a split with one class)
            MetricPoint(key, math.nan if value is None else float(value), step, when)
            for key, value in values.items()
            if value is None or isinstance(value, int | float) and not isinstance(value, bool)
        ]
    return points


def provenance_tags(record: RunRecord) -> dict[str, str]:
    """The privacy provenance of the run's final model (tag names: module docstring)."""
    document = record.document
    tags = {
        RUN_ID_TAG: record.run_id,
        "fedmed.federation": record.federation,
        "fedmed.task": str(document.get("task", "")),
        "fedmed.status": record.status,
    }
    for site, summary in sorted(document.get("privacy", {}).items()):
        tags[f"epsilon.{site}"] = _epsilon(summary.get("epsilon"), "epsilon" in summary)
        tags[f"delta.{site}"] = _text(summary.get("delta", "none"))
        tags[f"mechanism.{site}"] = mechanism(summary)
        tags[f"accountant.{site}"] = str(summary.get("accountant", "none"))
    client = document.get("client_privacy")
    if client:
        tags["client_epsilon"] = _epsilon(client.get("epsilon"), "epsilon" in client)
        tags["client_delta"] = _text(client.get("delta", "none"))
    if record.release is not None:
        head = record.release
        tags |= {
            "audit.entry": head.entry,
            "audit.seq": str(head.seq),
            "audit.hash": head.hash,
            "audit.key": head.key,
            "model.sha256": head.model_sha256,
        }
    return tags


def mechanism(summary: Mapping[str, Any]) -> str:
    """A site's mechanism as one line: Gaussian DP-SGD with σ, sampling rate and clip norm of
    its last release in this run (its ledger composes all of them: ``epsilon.<site>``)."""
    sigma = summary.get("noise_multiplier")
    if not sigma:
        return "none (no DP noise)"
    return (
        f"gaussian dp-sgd: noise_multiplier={sigma} "
        f"sample_rate={summary.get('sample_rate', 'unknown')} "
        f"clip_norm={summary.get('clip_norm', 'unknown')}"
    )


def _epsilon(value: float | None, reported: bool) -> str:
    """ε as a tag: full precision, ``unbounded`` for ∞, ``no ledger`` when never reported."""
    if not reported:
        return "no ledger"
    return "unbounded" if value is None or math.isinf(value) else repr(float(value))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def provenance_from_tags(tags: Mapping[str, str]) -> dict[str, Any]:
    """The provenance a registered model version's tags carry, as ``fedmed models list
    --json`` prints it: per site ε (null: unbounded), δ, mechanism and accountant, and the
    audit head."""
    sites = sorted(key.split(".", 1)[1] for key in tags if key.startswith("epsilon."))
    return {
        "run": tags.get(RUN_ID_TAG, ""),
        "federation": tags.get("fedmed.federation", ""),
        "status": tags.get("fedmed.status", ""),
        "sites": {
            site: {
                "epsilon": _parsed(tags[f"epsilon.{site}"]),
                "delta": _parsed(tags.get(f"delta.{site}", "none")),
                "mechanism": tags.get(f"mechanism.{site}", ""),
                "accountant": tags.get(f"accountant.{site}", ""),
            }
            for site in sites
        },
        "audit": {
            "entry": tags.get("audit.entry", ""),
            "seq": int(tags["audit.seq"]) if "audit.seq" in tags else None,
            "hash": tags.get("audit.hash", ""),
            "key": tags.get("audit.key", ""),
        },
        "model_sha256": tags.get("model.sha256", ""),
    }


def _parsed(text: str) -> float | str | None:
    """A number tag back as a number; ``unbounded`` as null (fedmed's JSON for ∞)."""
    if text == "unbounded":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def describe_epsilons(provenance: Mapping[str, Any]) -> str:
    """``site ε`` pairs on one line, as fedmed prints ε (:func:`format_epsilon`)."""
    parts = []
    for site, summary in provenance["sites"].items():
        epsilon = summary["epsilon"]
        parts.append(f"{site} {epsilon if isinstance(epsilon, str) else format_epsilon(epsilon)}")
    return ", ".join(parts)
