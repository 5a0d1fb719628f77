"""A checked run record into MLflow, and the registry's fedmed models back out.

The store: with no URI, an embedded one inside the run directory,
``sqlite:///<run>/mlruns/mlflow.db`` with artifacts under ``<run>/mlruns/artifacts``. Not
MLflow's file store (``<run>/mlruns`` as plain folders): MLflow 3 refuses it unless
``MLFLOW_ALLOW_FILE_STORE=true`` ("maintenance mode", no new features), and the model
registry is kept in the database anyway. Any ``sqlite:`` URI keeps its artifacts in an
``artifacts`` folder beside the database, never in MLflow's ``./mlruns`` of the current
folder; a server URI (a hospital's ``mlflow server``) keeps them where the server says.
``MLFLOW_TRACKING_URI`` is not read: a run lands on a server only when the command names
it.

One experiment and one registered model per federation (``fedmed-<federation>``); one
MLflow run per fedmed run (its ``fedmed.run_id`` tag — tracking the same run twice is
refused, so a history is never doubled). The MLflow run starts and ends at the times of the
coordinator's signed ``run-start`` and release entries, and is ``FINISHED`` only when the
run completed; only a completed run's model is registered.

MLflow 3 sends usage telemetry unless told not to: importing this module sets
``MLFLOW_DISABLE_TELEMETRY=true`` (MLflow's documented switch) before MLflow is imported,
unless the user set it; MLflow's INFO log lines (database migrations) are not shown.
Importing MLflow takes seconds, so the commands import this
module only when they track or list.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import logging  # noqa: E402  (MLflow reads the telemetry switch when it is imported)
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from mlflow.entities import Metric, Param, Run  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from requests.exceptions import RequestException  # noqa: E402

from fedmed.tracking import TrackingError  # noqa: E402
from fedmed.tracking.record import (  # noqa: E402
    ARTIFACT_FILES,
    ARTIFACT_FOLDERS,
    COMPLETED,
    RUN_ID_TAG,
    RunRecord,
    describe_epsilons,
    first_line,
    provenance_from_tags,
    provenance_tags,
    round_metrics,
    run_params,
)

# MLflow logs each schema migration of a new sqlite store at INFO on the console; fedmed
# prints where the run went, and MLflow's warnings still show.
logging.getLogger("mlflow").setLevel(logging.WARNING)

EMBEDDED_FOLDER = "mlruns"
EMBEDDED_DATABASE = "mlflow.db"
MODEL_ARTIFACT = "model"
PROBE_TIMEOUT_S = 10
UTC_STAMP = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class Tracked:
    """Where a run went: the MLflow run, and the registered version if one was made."""

    uri: str
    experiment_id: str
    mlflow_run_id: str
    model_name: str
    model_version: str | None


def embedded_uri(run_dir: Path) -> str:
    """The embedded store of ``run_dir`` (see the module docstring)."""
    return f"sqlite:///{(Path(run_dir) / EMBEDDED_FOLDER / EMBEDDED_DATABASE).resolve()}"


def store_name(federation: str) -> str:
    """The experiment and registered model of a federation's runs."""
    return f"fedmed-{federation}"


def check_store(uri: str, *, create: bool) -> None:
    """Fail early, in one line, on a store that cannot be used: an ``http(s)`` server that
    does not answer (any HTTP answer counts: a proxy asking for credentials is there), a
    ``sqlite`` database whose folder is missing, or — when ``create`` is false, for reading
    — a database that does not exist (opening it would silently create an empty one)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(f"cannot reach the MLflow tracking server {uri}: {reason}") from exc
    elif parsed.scheme == "sqlite":
        database = Path(uri.removeprefix("sqlite:///"))
        if create and not database.parent.is_dir():
            raise TrackingError(f"tracking store {uri}: folder {database.parent} not found")
        if not create and not database.is_file():
            raise TrackingError(f"tracking store {uri}: {database} not found")


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """MLflow's, the database's and the network's errors as one :class:`TrackingError` line
    naming the store."""
    try:
        yield
    except (MlflowException, RequestException, OSError) as exc:
        raise TrackingError(f"tracking store {uri}: {first_line(exc)}") from exc


def open_client(uri: str) -> MlflowClient:
    with store_errors(uri):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """``artifacts`` beside a sqlite database; the server's default otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def track(record: RunRecord, uri: str) -> Tracked:
    """Log ``record`` to the store at ``uri`` and register its model if the run completed.

    The MLflow run is marked ``FAILED`` if logging breaks half-way, so no run is left
    ``RUNNING``; the error names the store.
    """
    client = open_client(uri)
    name = store_name(record.federation)
    with store_errors(uri):
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(name, artifact_location=_artifact_location(uri))
        )
        earlier = client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{record.run_id}'"
        )
        if earlier:
            raise TrackingError(
                f"run {record.run_id} is already tracked in {uri} "
                f"(MLflow run {earlier[0].info.run_id})"
            )
        tags = provenance_tags(record)
        run = client.create_run(
            experiment_id, start_time=record.started_ms, tags=tags, run_name=record.run_id
        )
        run_id = run.info.run_id
        try:
            _log_run(client, run_id, record)
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        end = record.release.time_ms if record.release else None
        client.set_terminated(
            run_id, status="FINISHED" if record.status == COMPLETED else "FAILED", end_time=end
        )
        version = _register(client, name, run, record, tags) if record.releasable else None
    return Tracked(uri, experiment_id, run_id, name, version)


def _log_run(client: MlflowClient, run_id: str, record: RunRecord) -> None:
    """Params, per-round metrics and the artifacts of the run directory (MLflow splits the
    batch into requests within its limits)."""
    client.log_batch(
        run_id,
        metrics=[Metric(p.key, p.value, p.timestamp_ms, p.step) for p in round_metrics(record)],
        params=[Param(key, value) for key, value in run_params(record.document).items()],
    )
    for file in ARTIFACT_FILES:
        if (record.root / file).is_file():
            client.log_artifact(run_id, str(record.root / file))
    for folder in ARTIFACT_FOLDERS:
        if (record.root / folder).is_dir():
            client.log_artifacts(run_id, str(record.root / folder), artifact_path=folder)
    if record.model is not None:
        client.log_artifact(run_id, str(record.model), artifact_path=MODEL_ARTIFACT)


def _register(
    client: MlflowClient, name: str, run: Run, record: RunRecord, tags: dict[str, str]
) -> str:
    """A new version of ``name``: the run's model, with its privacy provenance as tags."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(
            name, description="fedmed global models; each version's tags carry its privacy "
            "provenance (ε, δ, mechanism and accountant per site, coordinator audit head)"
        )
    provenance = provenance_from_tags(tags)
    version = client.create_model_version(
        name,
        source=f"{run.info.artifact_uri}/{MODEL_ARTIFACT}",
        run_id=run.info.run_id,
        tags=tags,
        description=f"fedmed run {record.run_id}; ε per site: {describe_epsilons(provenance)}",
    )
    return str(version.version)


def registered_models(uri: str) -> list[dict[str, Any]]:
    """Every registered model version that fedmed released, newest first, with its
    provenance (:func:`fedmed.tracking.record.provenance_from_tags`)."""
    client = open_client(uri)
    versions = []
    with store_errors(uri):
        token = None
        while True:
            page = client.search_model_versions(page_token=token)
            versions += [v for v in page if RUN_ID_TAG in v.tags]
            token = page.token
            if not token:
                break
    versions.sort(key=lambda v: (v.creation_timestamp, v.name), reverse=True)
    return [
        {
            "name": v.name,
            "version": str(v.version),
            "mlflow_run_id": v.run_id,
            "source": v.source,
            "created": time.strftime(UTC_STAMP, time.gmtime(v.creation_timestamp // 1000)),
            **provenance_from_tags(v.tags),
        }
        for v in versions
    ]
