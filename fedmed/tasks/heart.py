"""UCI Heart Disease across four hospitals (FLamby's Fed-Heart-Disease).

Data: the four ``processed.*.data`` tables of the UCI Heart Disease database
(Janosi, Steinbrunn, Pfisterer, Detrano; CC BY 4.0), vendored in
``fedmed/data/uci_heart``. Natural split: one site per hospital. Label: presence
of heart disease (``num > 0``).

Missing values. Two preprocessings are offered:

- ``impute`` (default): a missing value (``?``, or a 0 where 0 is physiologically
  impossible: serum cholesterol, resting blood pressure) is replaced by the
  feature's reference value and flagged in a per-feature missing-indicator input,
  so the model can learn that "not measured" carries information (Switzerland
  records no cholesterol at all; VA misses a quarter of several features). All
  920 patients are kept.
- ``flamby``: FLamby's choice, for comparison with its published numbers — drop
  the three sparsest columns (slope, ca, thal) and then every row with a ``?``
  (740 patients remain). The dropped columns are kept as constant "missing"
  inputs so the model's shape does not change.

Scaling. Every site standardises with the same fixed data-dictionary constants
(typical adult values and spreads, :data:`REFERENCE_MEAN` / :data:`REFERENCE_SCALE`),
agreed as part of the federation's protocol like units are. No statistic of any
site's data leaves the site, and all sites' inputs live on one scale, which a
shared linear model needs (per-site z-scoring erases between-site differences
that are predictive). Train/test is a stratified 2/3–1/3 split with a fixed seed
independent of the training seed, so seeds vary training only.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from torch import nn

from fedmed.data.admission import AdmissionStage
from fedmed.data.splits import stratified_split
from fedmed.errors import ConfigError, DataError
from fedmed.explain.tabular_shap import TabularShap
from fedmed.tasks import register_task
from fedmed.tasks.base import BinaryLogitPack, SiteData, array_site_data

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "uci_heart"
SITE_FILES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va": "processed.va.data",
}
COLUMNS = "age sex cp trestbps chol fbs restecg thalach exang oldpeak slope ca thal num".split()
FEATURES = COLUMNS[:-1]
# A recorded 0 here means "not measured" (Switzerland stores every cholesterol as 0).
ZERO_MEANS_MISSING = ("trestbps", "chol")
# Data-dictionary scaling constants, in FEATURES order: typical adult values and spreads
# (age in years, blood pressure in mm Hg, cholesterol in mg/dl, heart rate in bpm, ...).
REFERENCE_MEAN = np.array(
    [54, 0.5, 3, 130, 240, 0, 0.5, 140, 0.3, 1, 1.5, 0.5, 5], dtype=np.float64
)
REFERENCE_SCALE = np.array(
    [9, 0.5, 1, 18, 50, 0.4, 0.8, 25, 0.5, 1.1, 0.6, 0.9, 1.9], dtype=np.float64
)
# What a recorded value may be (heart-disease.names): a finite value in a plausible range
# (0 stands for "not measured" in trestbps and chol), or one of a categorical's codes.
# ``num`` is the label (0: no disease, 1–4: disease).
VALUE_RANGES = {
    "age": (0.0, 120.0),
    "trestbps": (0.0, 300.0),
    "chol": (0.0, 1000.0),
    "thalach": (0.0, 300.0),
    "oldpeak": (-10.0, 10.0),
}
VALUE_CODES = {
    "sex": (0.0, 1.0),
    "cp": (1.0, 2.0, 3.0, 4.0),
    "fbs": (0.0, 1.0),
    "restecg": (0.0, 1.0, 2.0),
    "exang": (0.0, 1.0),
    "slope": (1.0, 2.0, 3.0),
    "ca": (0.0, 1.0, 2.0, 3.0),
    "thal": (3.0, 6.0, 7.0),
    "num": (0.0, 1.0, 2.0, 3.0, 4.0),
}
# The model's input columns (encode_features): each feature, then its missing indicator.
FEATURE_NAMES = (*FEATURES, *(f"{name} missing" for name in FEATURES))
FLAMBY_DROPPED = ("slope", "ca", "thal")
SPLIT_SEED = 42
TEST_FRACTION = 1 / 3
PREPROCESSINGS = ("impute", "flamby")


def read_site_table(path: Path, stage: AdmissionStage | None = None) -> pd.DataFrame:
    """Read one ``processed.*.data`` file; DataError naming the file if it is not that format.

    A hospital's export may carry a header row naming the columns (:data:`COLUMNS`, in any
    order) and identifier columns beside them. The table passes ``stage`` (the site's de-id
    gate) first: identifier columns declared in ``[deid] identifier_columns`` are dropped or
    keyed-hashed, and any other column that looks like names, record numbers or birth dates
    is refused naming the file and the column. What is left must be exactly the UCI columns
    (hashed identifier columns aside, which the model does not read).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a UCI processed.*.data table)")
    try:
        table = pd.read_csv(path, header=_header_row(path), na_values="?")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        detail = " ".join(str(exc).split())  # pandas ends some messages with a newline
        raise DataError(f"{path}: not a readable comma-separated table ({detail})") from None
    if stage is not None:
        table = stage.admit_table("heart", path, table)
    if isinstance(table.columns[0], str):  # a header row named the columns
        hashed = {c for c, action in stage.config.identifier_columns if action == "hash"} \
            if stage is not None else set()
        missing = [c for c in COLUMNS if c not in table.columns]
        unknown = [c for c in table.columns if c not in COLUMNS and c not in hashed]
        if missing or unknown:
            raise DataError(f"{path}: header lacks column(s) {', '.join(missing) or 'none'} "
                            f"and has unknown column(s) {', '.join(map(str, unknown)) or 'none'}; "
                            f"expected {', '.join(COLUMNS)}")
        table = table[list(COLUMNS)]
    elif table.shape[1] != len(COLUMNS):
        raise DataError(
            f"{path}: expected {len(COLUMNS)} comma-separated columns, found {table.shape[1]}"
        )
    table.columns = list(COLUMNS)
    non_numeric = [c for c in COLUMNS if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise DataError(f"{path}: non-numeric values in column(s) {', '.join(non_numeric)}")
    if table["num"].isna().any():
        raise DataError(f"{path}: the label column 'num' has missing values")
    check_values(path, table)
    return table


def _header_row(path: Path) -> int | None:
    """0 when the file's first line is a header: it names one of the UCI :data:`COLUMNS`."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = next(csv.reader([handle.readline()]), [])
    return 0 if {cell.strip() for cell in first} & set(COLUMNS) else None


def check_values(path: Path, table: pd.DataFrame) -> None:
    """DataError naming file, row and column for the first value that is not finite, outside
    its data-dictionary range (:data:`VALUE_RANGES`) or not one of its codes
    (:data:`VALUE_CODES`); ``num`` is the label, coded 0–4. Missing values (``?``) pass."""
    for column in COLUMNS:
        values = table[column].to_numpy(dtype=np.float64)
        present = ~np.isnan(values)
        if column in VALUE_CODES:
            bad = present & ~np.isin(values, VALUE_CODES[column])
            expected = "one of " + ", ".join(f"{code:g}" for code in VALUE_CODES[column])
        else:
            low, high = VALUE_RANGES[column]
            bad = present & ~((values >= low) & (values <= high))  # inf fails here too
            expected = f"a finite value in [{low:g}, {high:g}]"
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            kind = "label" if column == "num" else "column"
            raise DataError(
                f"{path}: row {row + 1}, {kind} {column!r}: {float(values[row])!r} "
                f"is not {expected}"
            )


def encode_features(features: np.ndarray) -> np.ndarray:
    """Reference-scaled features (missing → reference value) followed by missing indicators."""
    missing = np.isnan(features)
    filled = np.where(missing, REFERENCE_MEAN, features)
    scaled = (filled - REFERENCE_MEAN) / REFERENCE_SCALE
    return np.hstack([scaled, missing.astype(np.float64)]).astype(np.float32)


def decode_features(encoded: np.ndarray) -> np.ndarray:
    """Encoded rows (:func:`encode_features`) back in data-dictionary units, NaN where the
    value was not measured, followed by the indicators: what a SHAP waterfall prints beside
    each feature, since a clinician reads "chol 290", not a reference-scaled 1.0."""
    count = len(FEATURES)
    missing = encoded[:, count:]
    # float32 inputs come back a hair off (0 mm ST depression as -1e-8, printed "-0"):
    # rounded to the tables' precision, + 0.0 turns -0.0 into 0.0.
    values = np.round(encoded[:, :count] * REFERENCE_SCALE + REFERENCE_MEAN, 3) + 0.0
    return np.hstack([np.where(missing > 0.5, np.nan, values), missing])


def site_arrays(
    table: pd.DataFrame, preprocessing: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test features and labels for one site table."""
    if preprocessing not in PREPROCESSINGS:
        raise ConfigError(
            f"unknown heart preprocessing {preprocessing!r}; expected one of {PREPROCESSINGS}"
        )
    table = table.copy()
    if preprocessing == "flamby":
        table[list(FLAMBY_DROPPED)] = np.nan
        table = table.dropna(subset=[c for c in COLUMNS if c not in FLAMBY_DROPPED])
    else:
        for column in ZERO_MEANS_MISSING:
            table.loc[table[column] == 0, column] = np.nan
    features = table[FEATURES].to_numpy(dtype=np.float64)
    labels = (table["num"].to_numpy() > 0).astype(np.float32)
    is_test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    encoded = encode_features(features)
    return encoded[~is_test], labels[~is_test], encoded[is_test], labels[is_test]


@register_task("heart")
class HeartTask(BinaryLogitPack):
    """Binary heart-disease prediction with a logistic-regression-sized model."""

    num_inputs = 2 * len(FEATURES)  # each feature and its missing-value indicator
    default_sites = tuple(SITE_FILES)
    default_lr = 0.05
    default_batch_size = 16
    default_local_epochs = 1
    explainer: ClassVar[TabularShap] = TabularShap(FEATURE_NAMES, decode_features)

    def __init__(self, preprocessing: str = "impute") -> None:
        if preprocessing not in PREPROCESSINGS:
            raise ConfigError(
                f"unknown heart preprocessing {preprocessing!r}; expected one of {PREPROCESSINGS}"
            )
        self.preprocessing = preprocessing

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        if site not in SITE_FILES:
            raise ConfigError(f"unknown heart site {site!r}; sites: {', '.join(SITE_FILES)}")
        folder = Path(data_dir) if data_dir is not None else DATA_DIR
        if not folder.is_dir():
            raise DataError(f"{folder}: data folder not found")
        table = read_site_table(folder / SITE_FILES[site], self.admission_stage(site))
        x_train, y_train, x_test, y_test = site_arrays(table, self.preprocessing)
        return array_site_data(site, x_train, y_train, x_test, y_test)

    def explain(self, model: nn.Module, site_data: SiteData, out_dir: Path) -> list[Path]:
        """SHAP's expected value is taken over the site's own training rows, so the explainer
        gets them beside the test split (they stay at the site like the test rows)."""
        return self.explainer.explain(model, site_data.test, site_data.site, Path(out_dir),
                                      self.explain_examples, background=site_data.train)


@register_task("heart-flamby")
class HeartFlambyTask(HeartTask):
    """The same hospitals with FLamby's preprocessing (740 patients), to compare with its
    published numbers: ``fedmed run examples/heart --set task=heart-flamby``."""

    def __init__(self) -> None:
        super().__init__("flamby")
