"""De-identification of tabular exports: declared identifier columns, and a screen for the rest.

A table's identifiers are columns, so a table is de-identified column by column: the site
declares its identifier columns in ``[deid] identifier_columns`` (``drop`` removes one,
``hash`` replaces each value by an HMAC under the site secret — a stable pseudonym that still
links a patient's rows and cannot be reversed without the secret). Every other column is
screened: one whose name or values look like patient names, record numbers or birth dates is
refused with a :class:`~fedmed.errors.DataError` naming the file and the column, never passed
through or dropped silently — the site must decide, in its policy, what that column is.

The screen is a backstop for a mislabelled export, not a detector of PHI in free text (free text
in a table belongs to the note gate). Its rules (:data:`TABLE_RULES_VERSION`):

- name: the column name holds a word such as ``name``, ``mrn``, ``dob``, ``ssn``, ``address``;
- values, on text columns: most non-empty values are person-name shaped (two or more
  capitalised words, or ``LAST, FIRST``), birth-date shaped (a calendar date), or record-number
  shaped (six or more digits, or letters then five or more digits) and nearly all distinct;
- values, on integer columns: nearly all distinct values of seven or more digits (record
  numbers), or eight-digit ``YYYYMMDD`` dates.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pandas as pd

from fedmed.deid.sitekey import SiteKey
from fedmed.errors import DataError

TABLE_RULES_VERSION = "fedmed-table-screen-1"
_NAME_WORDS = re.compile(
    r"(^|[^a-z])(name|surname|forename|firstname|lastname|mrn|medical.?record|patient.?id|"
    r"ssn|social.?security|dob|birth|address|street|phone|email|e.?mail)([^a-z]|$)",
    re.IGNORECASE)
_PERSON = re.compile(r"^[A-Z][a-z'\-]+(,? [A-Z][a-z'\-]+)+$|^[A-Z'\-]{2,}, ?[A-Z][A-Za-z'\-]+$")
_DATE = re.compile(r"^(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}/\d{2,4}|\d{1,2}\.\d{1,2}\.\d{4})$")
_RECORD = re.compile(r"^([A-Za-z]{1,4}[-_]?\d{5,}|\d{6,})$")
_MOSTLY = 0.8  # share of non-empty values that must fit a shape
_DISTINCT = 0.9  # share of distinct values for a record-number column


def screen_column(name: str, values: pd.Series) -> str | None:
    """What identifier ``name`` / ``values`` look like (a reason), or None."""
    match = _NAME_WORDS.search(str(name))
    if match:
        return f"its name contains {match.group(2)!r}"
    present = values.dropna()
    if present.empty:
        return None
    if pd.api.types.is_numeric_dtype(present):
        numbers = present.astype("float64")
        whole = numbers[np.isfinite(numbers)]
        if whole.empty or not (whole == whole.round()).all():
            return None  # measurements, not numbers that name a patient
        digits = whole.abs().map(lambda v: f"{v:.0f}")
        if (digits.str.len() >= 7).mean() >= _MOSTLY and whole.nunique() >= _DISTINCT * len(
                whole):
            return "its values look like record numbers (7+ digit, nearly all distinct)"
        if digits.str.fullmatch(r"(19|20)\d{2}(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])").mean() \
                >= _MOSTLY:
            return "its values look like dates (YYYYMMDD)"
        return None
    text = present.astype(str).str.strip()
    text = text[text != ""]
    if text.empty:
        return None
    if text.str.match(_PERSON).mean() >= _MOSTLY:
        return "its values look like person names"
    if text.str.match(_DATE).mean() >= _MOSTLY:
        return "its values look like dates"
    if text.str.match(_RECORD).mean() >= _MOSTLY and text.nunique() >= _DISTINCT * len(text):
        return "its values look like record numbers"
    return None


def deidentify_table(table: pd.DataFrame, source: str, declared: Mapping[str, str],
                     key: SiteKey) -> tuple[pd.DataFrame, Counter[str]]:
    """``table`` with declared identifier columns dropped or hashed and the rest screened.

    Returns the released table and counts (``column_dropped``, ``column_hashed``,
    ``values_hashed``); DataError naming ``source`` and the column for an undeclared column
    that looks like an identifier.
    """
    counts: Counter[str] = Counter()
    released = table.copy()
    for column in table.columns:
        action = declared.get(str(column))
        if action == "drop":
            released = released.drop(columns=[column])
            counts["column_dropped"] += 1
        elif action == "hash":
            present = released[column].notna()
            released.loc[present, column] = [
                key.digest("table-id", str(column), str(v)).hex()[:16]
                for v in released.loc[present, column]]
            counts["column_hashed"] += 1
            counts["values_hashed"] += int(present.sum())
        else:
            reason = screen_column(str(column), table[column])
            if reason:
                raise DataError(
                    f"{source}: column {column!r} looks like a patient identifier ({reason}); "
                    "declare it in policy.toml [deid] identifier_columns as \"drop\" or "
                    "\"hash\", or remove it from the export")
    return released, counts
