"""ICD-style multi-label coding of de-identified clinical notes, at four hospitals.

Data flow (docs/architecture.md § Data flow): raw note → de-identification gate → tokenizer →
model. The built-in sites hold the raw synthetic notes of :mod:`fedmed.data.icd_synth` (26
codes, long-tailed, negated mentions, per-hospital dialects, PHI in every note);
:func:`load_site` hands them to :func:`fedmed.data.text_admission.admitted_site_notes`, which
runs the site's gate and caches what it released. Only released text ever reaches
:func:`~fedmed.tasks.icd_encoding.encode`. The gate is the pack's admission stage
(:meth:`~fedmed.tasks.base.TaskPack.admission_stage`): on a node the site home's, which keeps
the gate's secret, quarantine and cache in the home and signs each batch into its audit log;
outside a node (local studies, the CLI's preflight) ``<state>/gate/icd/<site>``, unsigned.

The pack's parts, one module each:

- :mod:`fedmed.tasks.icd_encoding`: the hashed-word tokenizer and :class:`NotesDataset`;
- :mod:`fedmed.tasks.icd_model`: the CAML-style model :class:`CamlNet` and the metrics;
- :mod:`fedmed.explain.text_evidence`: the explainer, per-code attention evidence written as
  ``evidence-<site>.json`` and ``evidence-<site>.md``;
- this module: the sites, their gate, and the pack that ties them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from fedmed.config import Scalar
from fedmed.data.admission import AdmissionStage
from fedmed.data.icd_notes import NOTES_FILE, site_notes
from fedmed.data.icd_synth import (
    CODE_IDS,
    N_TEST_DEFAULT,
    N_TRAIN_DEFAULT,
    SITES,
    builtin_site_notes,
)
from fedmed.data.site_folders import site_folders
from fedmed.data.text_admission import Admission, admitted_notes, admitted_site_notes
from fedmed.errors import ConfigError, DataError
from fedmed.explain.text_evidence import TextEvidence
from fedmed.state import state_dir
from fedmed.tasks import register_task
from fedmed.tasks.base import SiteData, TaskPack, fingerprint_arrays, predict
from fedmed.tasks.icd_encoding import NotesDataset
from fedmed.tasks.icd_model import CamlNet, coding_scores
from fedmed.tasks.site_size import refuse_with_data_dir, train_size_only


def default_site_home(site: str) -> Path:
    """Where a site's gate keeps its secret, quarantine and admitted notes outside a node."""
    return state_dir("gate", "icd", site)


def admit_site(site: str, site_home: Path, n_train: int = N_TRAIN_DEFAULT,
               n_test: int = N_TEST_DEFAULT, stage: AdmissionStage | None = None) -> Admission:
    """The built-in raw notes of ``site`` through its gate (cached after the first call).

    The built-in sites are one fixed draw: test notes never depend on the training seed
    (the task-pack contract), and one admission per site is cached for every seed and run.
    """
    if site not in SITES:
        raise ConfigError(f"unknown icd site {site!r}; sites: {', '.join(SITES)}")
    raw = builtin_site_notes(site, n_train, n_test)
    if stage is None:
        return admitted_site_notes("icd", site, site_home, raw)
    return admitted_site_notes("icd", site, site_home, raw, stage.config, sign=stage.sign)


@register_task("icd")
class IcdTask(TaskPack):
    """Multi-label ICD-style coding of released clinical notes with a CAML-style CNN."""

    metrics = ("micro_f1", "macro_f1", "precision_at_5")
    primary_metric = "micro_f1"
    default_sites = tuple(SITES)
    default_lr = 0.2
    default_batch_size = 16
    default_local_epochs = 2
    codes = CODE_IDS
    notes_dataset: type[NotesDataset] = NotesDataset  # how the model reads a released note
    explainer = TextEvidence(CODE_IDS)  # the attention evidence of the first test notes
    train_size: int | None = None  # built-in sites: training notes each (None: the built-in 120)

    def configure(self, settings: Mapping[str, Scalar]) -> None:
        """``train-size`` only (:mod:`fedmed.tasks.site_size`)."""
        self.train_size = train_size_only(self.name, settings)

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        if data_dir is None:
            return list(self.default_sites)
        return site_folders(Path(data_dir), NOTES_FILE)

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        """A built-in site, or with ``data_dir`` the hospital's own ``<site>/notes.jsonl``
        (:mod:`fedmed.data.icd_notes`, read note by note: a long note is never held whole
        while it is admitted); either way through the site's gate first."""
        if self.admission is None:  # outside a node: the shared local gate of the icd packs
            stage = AdmissionStage(site, default_site_home(site))
        else:
            stage = self.admission_stage(site)
        refuse_with_data_dir(self.train_size, data_dir)
        if data_dir is None:
            n_train = self.train_size or N_TRAIN_DEFAULT
            return self.site_data(site, admit_site(site, stage.home, n_train, stage=stage))
        notes = partial(site_notes, Path(data_dir) / site / NOTES_FILE, self.codes)
        return self.site_data(site, admitted_notes("icd", site, stage.home, notes,
                                                   stage.config, sign=stage.sign))

    def load_builtin_site(self, site: str, gate_home: Path) -> SiteData:
        """A built-in site with its gate's files under ``gate_home`` (tests keep their own)."""
        return self.site_data(site, admit_site(site, gate_home))

    def site_data(self, site: str, admission: Admission) -> SiteData:
        """The released notes of ``admission`` as the model reads them."""
        folder = admission.cache_file.parent
        train, test = (self.notes_dataset(admission.split(n), folder) for n in ("train", "test"))
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"{admission.cache_file}: the gate released no "
                            f"{'training' if len(train) == 0 else 'test'} notes for {site}")
        return SiteData(
            site=site, train=train, val=None, test=test,
            fingerprint=fingerprint_arrays(train.identity() + test.identity()),
        )

    def build_model(self) -> nn.Module:
        return CamlNet(len(self.codes))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy summed over codes, averaged over notes.

        Summed, not averaged, over codes: each code is its own binary decision, and a mean
        would shrink every gradient by the number of codes (26), so learning rates would
        have to grow with the code set.
        """
        per_code = nn.functional.binary_cross_entropy_with_logits(
            outputs, targets.float(), reduction="none")
        return per_code.sum(dim=1).mean()

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        logits, targets = predict(model, dataset, device)
        return coding_scores(logits, targets)
