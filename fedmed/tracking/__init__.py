"""Experiment tracking and a model registry with privacy provenance (MLflow, optional).

Two modules, split so the part that decides *what* is logged has no MLflow in it:

- :mod:`fedmed.tracking.record` reads a finished run directory and checks it against the
  coordinator's signed audit log: the run's configuration, its per-round, per-site metrics
  and ε, its artifacts, and the provenance tags of the released model.
- :mod:`fedmed.tracking.mlflow_store` writes that record to an MLflow tracking store and
  model registry and reads the registry back (``fedmed models list``). It needs the
  ``fedmed[tracking]`` extra (``mlflow-skinny``).

Why afterwards, from the run directory, rather than streamed by the coordinator: the run
directory is what both a simulation (on this machine) and a deployed coordinator (on its
machine) leave behind, so one reader serves ``fedmed run --track`` and ``fedmed models track
RUN_DIR``; ``metrics.json`` already holds every round, so nothing of the per-round history is
lost; and what is registered is checked against the signed log first, which a live stream
could not do before the run ends. A tracking server that is down costs the run nothing: the
run directory stays the record and can be tracked later.
"""

from __future__ import annotations

from fedmed.errors import FedmedError


class TrackingError(FedmedError):
    """A run directory, tracking store or registry that cannot be read or written."""
