"""A site's admission stage: the one place raw site data pass the de-identification gate.

Why one object: every modality a node reads (clinical notes, DICOM images and series, tables,
ECG records) goes through the gate before a task pack may read it (docs/architecture.md § Data
flow), and every such batch must leave a signed ``deid-batch`` entry in the site's audit log.
:class:`AdmissionStage` carries what that needs — the site, its home (which holds the gate's
secret, quarantine, batch reports and caches), the site's ``[deid]`` settings, and the signer
of its audit log — so a pack asks it for admitted data and never touches raw data otherwise.

The node builds the stage from its site home (``fedmed.clients.site_home.SiteHome.admission``);
the signer appends the batch report under the home's lock, once per batch id. Batch ids are
keyed digests of the raw input and the settings (:meth:`AdmissionStage.batch_id`), so the same
data admitted again by another process of the same run (each simulated node, each Flower
message process) is signed once, not at every process start; new data or new settings give a
new id and a new entry. The report is signed before the admitted data are returned, so nothing
is trained on before its batch is in the log.

``fedmed run``'s preflight opens each site through its site home too (the batches it signs are
the nodes' batches). Local studies load sites without a node: :meth:`AdmissionStage.local`
gives them the same gate (same de-identification) with its state under
``<state>/gate/<task>/<site>`` and no signer — they train nothing that leaves the machine and
have no site log to sign into.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from fedmed.deid.config import DeidConfig
from fedmed.deid.sitekey import SiteKey
from fedmed.deid.tabular import TABLE_RULES_VERSION, deidentify_table
from fedmed.errors import DataError
from fedmed.state import state_dir

if TYPE_CHECKING:
    from pydicom import Dataset

    from fedmed.deid.batch import Batch
    from fedmed.deid.gate import Gate

Signer = Callable[[Mapping[str, Any]], object]
"""Signs one batch report into the site's audit log (once per ``batch`` id)."""
ADMISSION_VERSION = "fedmed-admission-stage-1"
WFDB_RULES_VERSION = "fedmed-wfdb-header-1"  # comments removed, identifier shapes counted


class ItemQuarantined(DataError):
    """Raised by a per-item hook: the gate held this item back (reason in the batch report)."""


@dataclass(frozen=True)
class AdmissionStage:
    """One site's gate: its home, its ``[deid]`` settings and (on a node) its log signer."""

    site: str
    home: Path
    config: DeidConfig = field(default_factory=DeidConfig)
    sign: Signer | None = None

    @classmethod
    def local(cls, task: str, site: str) -> AdmissionStage:
        """The unsigned stage of a load outside a node (see the module docstring)."""
        return cls(site, state_dir("gate", task, site))

    def gate(self, detector: Any | None = None) -> Gate:
        """The site's :class:`fedmed.deid.gate.Gate` (which signs nothing itself)."""
        from fedmed.deid.gate import Gate  # loads Presidio (seconds): only when a gate runs

        return Gate(self.home, self.config, detector)

    def key(self) -> SiteKey:
        """The site's de-id secret (created in its home on first use)."""
        return SiteKey.load_or_create(self.home)

    def batch_id(self, kind: str, task: str, raw_digest: str) -> str:
        """A batch id keyed by the site secret over the raw input's digest, the task and the
        settings: the same admission gets the same id (signed once), anything new a new one.
        Keyed, so the id cannot be used to confirm a guess of the raw data."""
        digest = self.key().digest(ADMISSION_VERSION, kind, task, self.site, repr(self.config),
                                   raw_digest)
        return f"{kind}-{digest.hex()[:32]}"

    def record(self, report: Mapping[str, Any]) -> None:
        """Sign ``report`` into the site's log (a no-op for a :meth:`local` stage)."""
        if self.sign is not None:
            self.sign(report)

    @contextmanager
    def folder_batch(self, kind: str, task: str, folder: Path) -> Iterator[FolderGate]:
        """The per-file hooks of one site folder's batch (``kind``: ``dicom`` for images,
        ``ecg`` for recordings), for the readers of :mod:`fedmed.data.imaging_readers` and
        :mod:`fedmed.data.ecg_readers`.

        When the folder has been read without error the batch report is written and signed;
        only then do the readers' arrays reach the pack. The batch id covers every file of
        the folder, so another process reading the same folder is not signed again.
        """
        from fedmed.deid.dicom import PROFILE_VERSION

        gate = self.gate()
        folder_gate = FolderGate(gate, gate.batch(kind, self.batch_id(kind, task,
                                                                      folder_digest(folder))))
        yield folder_gate
        versions = {"dicom_profile": PROFILE_VERSION, "task": task}
        if kind == "ecg":
            versions["wfdb_header"] = WFDB_RULES_VERSION
        self.record(gate.finish(folder_gate.batch, versions))

    def admit_table(self, task: str, path: Path, table: pd.DataFrame) -> pd.DataFrame:
        """One table file through the gate: the ``[deid] identifier_columns`` dropped or
        keyed-hashed, every other column screened (:mod:`fedmed.deid.tabular`; DataError
        naming the file and the column); the batch signed before the table is returned."""
        raw = Path(path).read_bytes()
        batch = self.open_batch("table", task, hashlib.sha256(raw).hexdigest())
        batch.receive(raw)
        released, counts = deidentify_table(table, str(path), dict(self.config.identifier_columns),
                                            batch.key)
        batch.counts.update(counts)
        batch.release(released.to_csv(index=False).encode())
        self.close_batch(batch, {"table_rules": TABLE_RULES_VERSION, "task": task,
                                 "rows": len(released), "columns": len(released.columns)})
        return released

    def open_batch(self, kind: str, task: str, raw_digest: str) -> Batch:
        """A batch record for an admission that needs no gate (tables)."""
        from fedmed.deid.batch import Batch

        return Batch(kind, self.key(), self.home, self.batch_id(kind, task, raw_digest))

    def close_batch(self, batch: Batch, versions: dict[str, Any]) -> dict[str, Any]:
        """Write and sign the report of a batch from :meth:`open_batch`; returns it."""
        report = batch.report(self.config.mode, versions)
        self.record(report)
        return report


class FolderGate:
    """The gate's hooks for the files of one site folder, all counted in one batch."""

    def __init__(self, gate: Gate, batch: Batch) -> None:
        self.gate = gate
        self.batch = batch

    def dicom_header(self, dataset: Dataset) -> Dataset:
        """De-identify a parsed DICOM header in place (PS3.15 basic profile, the patient's
        date offset, UID remap), or raise :class:`ItemQuarantined` (burnt-in annotation,
        identifiers left); the reader then leaves the file out. The file is named by
        ``dataset.filename`` (set by the readers)."""
        name = str(getattr(dataset, "filename", "") or f"dataset-{self.batch.received}")
        source = Path(name)
        self.batch.receive(source.read_bytes() if source.is_file() else str(dataset).encode())
        if not self.gate.admit_dicom_dataset(dataset, name, self.batch):
            raise ItemQuarantined(f"{name}: quarantined by the de-identification gate")
        return dataset

    def wfdb_header(self, header: Path, comments: Sequence[str]) -> None:
        """Admit a WFDB record's header: its free-text comment lines (where exports put age,
        sex, diagnoses and sometimes names or record numbers) are removed — the reader keeps
        only the signal, its rate and lead names — and counted, with the identifier shapes
        found in them (SSN, MRN, phone, e-mail; :mod:`fedmed.deid.residual`)."""
        from fedmed.deid.residual import residual_findings  # imports Presidio's recognizers

        raw = header.read_bytes()
        signal = header.with_suffix(".dat")
        self.batch.receive(raw + (signal.read_bytes() if signal.is_file() else b""))
        self.batch.counts["wfdb_comments_removed"] += len(comments)
        self.batch.counts.update(f"wfdb_comment_{finding.kind}"
                                 for line in comments for finding in residual_findings(line))
        kept = [line for line in raw.decode("utf-8", "replace").splitlines()
                if not line.lstrip().startswith("#")]
        self.batch.release("\n".join(kept).encode())


def folder_digest(folder: Path) -> str:
    """SHA-256 over the names and contents of every file under ``folder`` (dot-files aside)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(str(relative).encode() + b"\x00")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
