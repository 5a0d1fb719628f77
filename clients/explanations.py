"""The node's side of explanations: on the run's last evaluation, explain at the site.

Contract with the coordinator (``fedmed.server.recording``, constants in
:mod:`fedmed.explain.outcome`): when the evaluate config carries ``final-round = true`` and the
``run-id``, the node writes its task pack's explanations of the model it has just scored into
``<site home>/runs/<run>/explanations/`` and adds ``explain-count``, ``explain-folder`` and,
on failure, ``explain-error`` to its evaluate reply. The files never leave the site: they
show patient data. Each write is recorded in the site's signed audit log (kind
``explanations``: run, round, folder, file names, error) so the hospital's auditor sees that
patient-derived files were made, where, and for which run.

A site home that does not exist is not created here: a home is created whole by the first
training round (``SiteHome.open``), and a folder made here would later be refused as a home
without a policy. Such a site reports the error instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from flwr.common import Scalar
from torch import nn

from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.explain.outcome import (
    COUNT,
    FINAL_ROUND,
    ExplanationOutcome,
    explanation_folder,
)
from fedmed.privacy.policy import POLICY_FILE
from fedmed.tasks.base import SiteData, TaskPack
from fedmed.training.loop import set_weights

logger = logging.getLogger(__name__)


def explain_final_round(
    site: HospitalSite, home_root: Path, weights: Sequence[np.ndarray],
    config: Mapping[str, Scalar],
) -> dict[str, Scalar]:
    """The explanation metrics for this evaluate reply; empty unless it is the last round.

    ``weights`` must be exactly what the site just evaluated (the scores in the report and
    the pictures beside them describe one model). Never raises: a failure is returned as
    ``explain-error`` (see :mod:`fedmed.explain.outcome`).
    """
    if not bool(config.get(FINAL_ROUND, False)):
        return {}
    if not site.pack.explanation_kind:  # the pack has no explainer: nothing to write or say
        return {COUNT: 0}
    run_id = str(config.get("run-id", ""))
    home_root = Path(home_root).absolute()  # the reply names the folder wherever the node runs
    try:
        folder = explanation_folder(home_root, run_id)
    except ValueError as exc:
        return _unexplained(site, ExplanationOutcome.failed(home_root, exc))
    if not (home_root / POLICY_FILE).is_file():
        missing = FileNotFoundError(f"{home_root}: no site home (policy.toml); nothing written")
        return _unexplained(site, ExplanationOutcome.failed(folder, missing))
    try:
        model = site.pack.build_model()
        set_weights(model, list(weights))
    except Exception as exc:  # weights that do not fit the pack's model: report, do not crash
        logger.exception("site %s: cannot rebuild the evaluated model to explain it", site.name)
        outcome = ExplanationOutcome.failed(folder, exc)
    else:
        outcome = write_explanations(site.pack, model, site.data, folder)
    return _audited(site, home_root, run_id, config, outcome).to_metrics()


def _unexplained(site: HospitalSite, outcome: ExplanationOutcome) -> dict[str, Scalar]:
    """Log why nothing could be written (there is no home to audit it in) and say so."""
    logger.error("site %s: explanations not written: %s", site.name, outcome.error)
    return dict(outcome.to_metrics())


def _audited(
    site: HospitalSite, home_root: Path, run_id: str, config: Mapping[str, Scalar],
    outcome: ExplanationOutcome,
) -> ExplanationOutcome:
    """Record ``outcome`` in the site's audit log; a failure to do so joins the error."""
    home = SiteHome(home_root, site.name)
    payload = {
        "run": run_id,
        "round": int(config.get("server-round", 0)),
        "task": site.pack.name,
        "folder": str(outcome.folder),
        "files": [path.name for path in outcome.files],
        "error": outcome.error,
    }
    try:
        with home.lock():
            home.audit().append("explanations", payload)
    except Exception as exc:
        note = f"not recorded in the site audit log: {type(exc).__name__}: {exc}"
        logger.error("site %s: explanations %s", site.name, note)
        error = f"{outcome.error}; {note}" if outcome.error else note
        return ExplanationOutcome(outcome.folder, outcome.files, error)
    return outcome


def write_explanations(
    pack: TaskPack, model: nn.Module, site_data: SiteData, out_dir: Path
) -> ExplanationOutcome:
    """Run ``pack.explain`` into ``out_dir``; an exception or an empty result becomes the error.

    Catching here (not in the pack) keeps every pack's explainer simple and makes the
    failure rule the same for all: logged with its traceback, reported, never fatal to the
    evaluation it follows.
    """
    out_dir = Path(out_dir)
    try:
        files = tuple(Path(f) for f in pack.explain(model, site_data, out_dir))
    except Exception as exc:  # any explainer bug: report it, keep the site's scores
        logger.exception("site %s: the %s explainer failed", site_data.site, pack.name)
        return ExplanationOutcome.failed(out_dir, exc)
    empty = [f.name for f in files if not f.is_file() or f.stat().st_size == 0]
    if empty:
        error = f"the {pack.name} explainer left missing or empty files: {', '.join(empty)}"
    elif not files and pack.explanation_kind:
        error = f"the {pack.name} explainer wrote no files (no test examples?)"
    else:
        return ExplanationOutcome(out_dir, files)
    logger.error("site %s: %s", site_data.site, error)
    return ExplanationOutcome(out_dir, files, error)
