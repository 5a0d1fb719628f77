"""Explanations of the final model, written at the site that holds the data they show.

A Grad-CAM overlay is a patient's image, an ECG saliency plot is a patient's trace, ICD
evidence quotes a patient's (de-identified) note. They are patient-derived, so they follow
the data, not the model: the node writes them into its own site home and never sends them.

Where: ``<site home>/runs/<run>/explanations/`` (:func:`explanation_folder`), beside the
site's policy, ledger and audit log, so the hospital that holds the data also holds — and
can delete — everything drawn from it.

When: on the run's last evaluation. The coordinator marks it in the evaluate config
(:data:`FINAL_ROUND`, with ``run-id``); the node then runs the explainer its task pack
declares (an :class:`fedmed.explain.base.Explainer`, through
:meth:`~fedmed.tasks.base.TaskPack.explain`) on the model it has just scored
(:mod:`fedmed.clients.explanations`).

What travels back: non-patient metadata only, in the evaluate reply's metrics —
:data:`COUNT` (files written), :data:`FOLDER` (where the site holds them, a path on the
site's machine) and, when the explainer failed, :data:`ERROR` (the exception's type and
message). The coordinator turns these into the run report's links
(:mod:`fedmed.server.run_report`).

Failures: an explainer that raises, or a pack with an explainer that writes no file, does not
fail the site's evaluation — the scores are still valid — but is never silent either: it is
logged at the site with its traceback, the error goes back in :data:`ERROR`, and the
coordinator records it as an event and in the report.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

# Evaluate config key (coordinator → node): this evaluation is the run's last.
FINAL_ROUND = "final-round"
# Evaluate reply metrics (node → coordinator); never scores, so the coordinator keeps them
# out of the metric tables and plots.
COUNT = "explain-count"
FOLDER = "explain-folder"
ERROR = "explain-error"
REPLY_KEYS = (COUNT, FOLDER, ERROR)

RUNS_DIR = "runs"
EXPLANATIONS_DIR = "explanations"
MAX_ERROR_CHARS = 300  # the error travels in a metric: type and message, not a traceback
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def explanation_folder(site_home: Path, run_id: str) -> Path:
    """``<site home>/runs/<run>/explanations``, with ``run_id`` made a safe folder name.

    The run id comes from the coordinator: a name that is not plain letters, digits, ``.``,
    ``_`` and ``-`` (or would be hidden, or too long) is replaced by a readable part plus a
    hash of the id, so no run id can point a write outside the site home.
    """
    if not run_id:
        raise ValueError("no run id: the coordinator must send run-id with the last evaluation")
    name = run_id
    if not _SAFE_NAME.fullmatch(run_id):
        readable = re.sub(r"[^A-Za-z0-9._-]", "_", run_id).lstrip("._-")[:60] or "run"
        name = f"{readable}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"
    return Path(site_home) / RUNS_DIR / name / EXPLANATIONS_DIR


@dataclass(frozen=True)
class ExplanationOutcome:
    """What one site's explainer did: the files it wrote and, if it failed, why."""

    folder: Path
    files: tuple[Path, ...] = ()
    error: str = ""

    @classmethod
    def failed(cls, folder: Path, exc: BaseException) -> ExplanationOutcome:
        """An outcome carrying ``exc`` as ``Type: message`` (the traceback stays in the log)."""
        return cls(folder, (), f"{type(exc).__name__}: {exc}")

    def to_metrics(self) -> dict[str, int | str]:
        """The evaluate-reply metrics: count and folder always, the error when there is one."""
        metrics: dict[str, int | str] = {COUNT: len(self.files), FOLDER: str(self.folder)}
        if self.error:
            metrics[ERROR] = self.error[:MAX_ERROR_CHARS]
        return metrics

