"""rhDNase in cystic fibrosis: a multi-centre trial whose 51 enrolling institutions are the sites.

Data: the ``rhDNase`` table of R's *survival* package (Therneau and Grambsch, *Modeling
Survival Data*, Springer 2000; Genentech's 1992 randomised double-blind trial of
aerosolised rhDNase against placebo), vendored in ``fedmed/data/rhdnase`` (provenance and
licence in its README). One row per pulmonary exacerbation (an infection needing IV
antibiotics) of 647 patients enrolled at 51 institutions, 4 to 24 patients each; the entry
and follow-up dates are replaced by the follow-up length in days (``futime``).

Why this pack: it is the many-site task of real data that ships offline. Every other pack
has 2–4 sites; here the sites are the trial's real institutions, so client sampling
(``fraction-train``) and a federation of dozens of sites run on real per-site data, with
the natural imbalance of a trial (a few large centres, many small ones).

Task, per patient: will the patient have an exacerbation during the trial's ~169 days of
follow-up (an IV-antibiotic course starting after enrolment; one running at enrolment is
not counted, as in the R documentation)? Inputs: the treatment arm, the FEV1 at enrolment
(% of predicted, scaled by fixed constants agreed by the federation, like the heart
pack's), and whether the patient was on IV antibiotics at enrolment. A logistic model.

Two site lists:

- ``rhdnase``: the 51 institutions, ``inst01`` … ``inst51``.
- ``rhdnase-split``: a documented partition to reach 100 sites — the 51 institutions with
  every one but the two smallest (``inst03``, 4 patients; ``inst05``, 7) split in two
  (``inst20a``, ``inst20b``). Each half holds the patients of one institution only, drawn
  with a fixed seed and stratified by outcome, as two clinics of one hospital would hold
  theirs; it is a scale test, not a second trial.

Train/test is a stratified 2/3–1/3 split per site with a fixed seed, as in the heart pack;
a small site's test split holds one to eight patients, so its AUC is often undefined (NaN:
one class only) and its accuracy coarse — the federation's mean is the figure to read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedmed.data.admission import AdmissionStage
from fedmed.data.splits import stratified_split
from fedmed.errors import ConfigError, DataError
from fedmed.tasks import register_task
from fedmed.tasks.base import BinaryLogitPack, SiteData, array_site_data

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "rhdnase"
TABLE_FILE = "rhdnase.csv"
COLUMNS = ("id", "inst", "trt", "fev", "ivstart", "ivstop", "futime")
NUM_INSTITUTIONS = 51
# FEV1 at enrolment, % of predicted: a typical value and spread of the trial's population,
# fixed by the protocol (no site's statistics leave it).
FEV_CENTRE, FEV_SCALE = 60.0, 25.0
FEATURE_NAMES = ("rhDNase arm", "FEV1 % predicted (scaled)", "on IV antibiotics at entry")
SPLIT_SEED = 42
TEST_FRACTION = 1 / 3
# rhdnase-split: the two smallest institutions (4 and 7 patients) stay whole; every other
# one is split in two. Fixed, not ranked at run time: a hospital's own export holds only
# its rows, and every node must agree on the federation's site list.
WHOLE_IN_SPLIT = (3, 5)


def institution_site(inst: int) -> str:
    """The site name of institution ``inst`` (1–51): ``inst07``."""
    return f"inst{inst:02d}"


def read_table(path: Path, stage: AdmissionStage | None = None) -> pd.DataFrame:
    """The rhDNase table (one row per exacerbation); DataError naming the file and the first
    bad value. The table passes the site's de-identification stage first, as every table a
    node reads does (its identifier screen; the vendored table has no dates or names)."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the rhDNase table {TABLE_FILE})")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        detail = " ".join(str(exc).split())
        raise DataError(f"{path}: not a readable comma-separated table ({detail})") from None
    if stage is not None:
        table = stage.admit_table("rhdnase", path, table)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                        f"{', '.join(COLUMNS)}")  # fmt: skip
    table = table[list(COLUMNS)]
    for column in COLUMNS:
        if not pd.api.types.is_numeric_dtype(table[column]):
            raise DataError(f"{path}: non-numeric values in column {column!r}")
    _check_values(path, table)
    return table


def _check_values(path: Path, table: pd.DataFrame) -> None:
    """The first value outside what the trial recorded, by row and column."""
    rules = {
        "id": (1.0, 1e6, False),
        "inst": (1.0, float(NUM_INSTITUTIONS), False),
        "trt": (0.0, 1.0, False),
        "fev": (0.0, 200.0, False),
        "ivstart": (-365.0, 365.0, True),
        "ivstop": (-365.0, 365.0, True),
        "futime": (0.0, 365.0, False),
    }
    for column, (low, high, may_miss) in rules.items():
        values = table[column].to_numpy(dtype=np.float64)
        bad = ~((values >= low) & (values <= high))  # NaN and inf fail here
        if may_miss:
            bad &= ~np.isnan(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: row {row + 1}, column {column!r}: {float(values[row])!r} "
                            f"is not a finite value in [{low:g}, {high:g}]")  # fmt: skip
    if not set(np.unique(table["trt"])) <= {0.0, 1.0}:
        raise DataError(f"{path}: column 'trt' must be 0 (placebo) or 1 (rhDNase)")


def patients(table: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: institution, arm, FEV1, on IV antibiotics at entry, and the
    label (an exacerbation starting after enrolment), in patient-id order."""
    grouped = table.groupby("id", sort=True)
    return pd.DataFrame({
        "inst": grouped["inst"].first().astype(int),
        "trt": grouped["trt"].first().astype(float),
        "fev": grouped["fev"].first().astype(float),
        "at_entry": grouped["ivstart"].agg(lambda s: bool((s <= 0).any())).astype(float),
        "event": grouped["ivstart"].agg(lambda s: bool((s > 0).any())).astype(float),
    })


def encode_features(rows: pd.DataFrame) -> np.ndarray:
    """The model's inputs (:data:`FEATURE_NAMES`), float32."""
    return np.stack(
        [rows["trt"], (rows["fev"] - FEV_CENTRE) / FEV_SCALE, rows["at_entry"]], axis=1
    ).astype(np.float32)


def split_sites(per_patient: pd.DataFrame) -> dict[str, np.ndarray]:
    """``rhdnase-split``'s 100 sites: patient ids per site (see the module docstring).

    Every institution but :data:`WHOLE_IN_SPLIT` is halved, stratified by outcome with a
    seed of its own, so a hospital's table of its own patients gives the same halves.
    """
    sites: dict[str, np.ndarray] = {}
    for inst, rows in per_patient.groupby("inst"):
        ids = rows.index.to_numpy()
        if inst in WHOLE_IN_SPLIT:
            sites[institution_site(inst)] = ids
            continue
        second = stratified_split(rows["event"].to_numpy(), 0.5, SPLIT_SEED + int(inst))
        sites[institution_site(inst) + "a"] = ids[~second]
        sites[institution_site(inst) + "b"] = ids[second]
    return sites


def split_site_names() -> tuple[str, ...]:
    """``rhdnase-split``'s site names, in institution order."""
    names: list[str] = []
    for inst in range(1, NUM_INSTITUTIONS + 1):
        site = institution_site(inst)
        names += [site] if inst in WHOLE_IN_SPLIT else [site + "a", site + "b"]
    return tuple(names)


@register_task("rhdnase")
class RhDNaseTask(BinaryLogitPack):
    """Exacerbation during the trial, per patient, at each of the 51 institutions."""

    num_inputs = len(FEATURE_NAMES)
    default_sites = tuple(institution_site(i) for i in range(1, NUM_INSTITUTIONS + 1))
    default_lr = 0.1
    default_batch_size = 8
    default_local_epochs = 1

    def site_patients(self, per_patient: pd.DataFrame) -> dict[str, np.ndarray]:
        """Patient ids per site of this pack."""
        return {
            institution_site(int(inst)): rows.index.to_numpy()
            for inst, rows in per_patient.groupby("inst")
        }

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        return list(self.default_sites)

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        if site not in self.default_sites:
            raise ConfigError(f"unknown {self.name} site {site!r}; sites: "
                              f"{self.default_sites[0]} … {self.default_sites[-1]}")  # fmt: skip
        folder = Path(data_dir) if data_dir is not None else DATA_DIR
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder not found")
        path = folder / TABLE_FILE
        per_patient = patients(read_table(path, self.admission_stage(site)))
        ids = self.site_patients(per_patient).get(site)
        if ids is None or len(ids) == 0:
            raise DataError(f"{path}: no patient of site {site}")
        rows = per_patient.loc[ids]
        features, labels = encode_features(rows), rows["event"].to_numpy(dtype=np.float32)
        is_test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
        if is_test.all() or not is_test.any():
            raise DataError(f"{path}: site {site} has too few patients ({len(ids)}) to hold "
                            "both a training and a test split")  # fmt: skip
        x_train, y_train = features[~is_test], labels[~is_test]
        x_test, y_test = features[is_test], labels[is_test]
        return array_site_data(site, x_train, y_train, x_test, y_test)


@register_task("rhdnase-split")
class RhDNaseSplitTask(RhDNaseTask):
    """The same trial as 100 sites: 49 institutions halved (see the module docstring)."""

    default_sites = split_site_names()

    def site_patients(self, per_patient: pd.DataFrame) -> dict[str, np.ndarray]:
        return split_sites(per_patient)
