"""De-identification settings of a site (the ``[deid]`` table of its ``policy.toml``).

Why a typed object: the settings decide what counts as PHI and what leaves the site, so
a typo must fail loudly at load time (``ConfigError`` naming the key) rather than silently
fall back to a default. The site policy loader passes its ``[deid]`` table to
:meth:`DeidConfig.from_dict`; the CLI can read a standalone TOML with :meth:`from_toml`.

Example::

    [deid]
    engine = "combined"            # combined | tagger | presidio
    pattern_threshold = 0.4        # Presidio/rule results below this score are dropped
    mode = "surrogate"             # surrogate | redact
    workers = 0                    # detection processes for big batches (0 = per core, <= 4)
    window_chars = 100000          # longer notes are detected in overlapping windows this long
    guards = true                  # precision guards on tagger spans (fedmed.deid.guards)
    max_note_chars = 67108864      # the gate quarantines longer notes (with the reason)
    [deid.identifier_columns]      # tables: identifier columns, dropped or keyed-hashed
    mrn = "hash"
    patient_name = "drop"
    [[deid.site_patterns]]
    name = "lab accession"
    type = "IDNUM"
    regex = "\\bLAB-\\d{6}\\b"
    score = 0.9
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fedmed.deid.io import DEFAULT_MAX_BYTES
from fedmed.deid.phi import CATEGORY_OF
from fedmed.errors import ConfigError

ENGINES = ("combined", "tagger", "presidio")
SPACY_MAX_CHARS = 1_000_000
"""spaCy refuses longer texts (error E088): no detection window may exceed it."""
MIN_WINDOW_CHARS = 400
MODES = ("surrogate", "redact")
IDENTIFIER_ACTIONS = ("drop", "hash")
_TABLES = ("site_patterns", "identifier_columns")  # checked apart from the scalar settings


@dataclass(frozen=True)
class SitePattern:
    """A site-specific identifier format (e.g. the local MRN or accession number)."""

    name: str
    type: str
    regex: str
    score: float = 0.9
    context: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in CATEGORY_OF:
            raise ConfigError(f"site pattern {self.name!r}: unknown PHI type {self.type!r}")
        try:
            re.compile(self.regex)
        except re.error as e:
            raise ConfigError(f"site pattern {self.name!r}: bad regex ({e})") from e
        if not 0.0 < self.score <= 1.0:
            raise ConfigError(f"site pattern {self.name!r}: score must be in (0, 1]")


@dataclass(frozen=True)
class DeidConfig:
    """Everything that changes what the de-id stage detects and writes."""

    engine: str = "combined"
    tagger: str | None = None  # None = shipped BiLSTM-CRF; else a checkpoint path
    tagger_threshold: float | None = None  # None = the threshold stored in the checkpoint
    pattern_threshold: float = 0.4
    site_patterns: tuple[SitePattern, ...] = ()
    mode: str = "surrogate"
    max_bytes: int = DEFAULT_MAX_BYTES
    date_shift_max_days: int = 1095
    workers: int = 0  # detection processes for large batches; 0 = one per usable core, <= 4
    window_chars: int = 100_000  # notes longer than this are detected window by window
    guards: bool = True  # precision guards on tagger spans (fedmed.deid.guards)
    max_note_chars: int = DEFAULT_MAX_BYTES  # the gate quarantines longer notes
    # Tables: column name -> "drop" | "hash" (fedmed.deid.tabular); sorted pairs, immutable.
    identifier_columns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"deid.engine {self.engine!r}: expected one of {ENGINES}")
        if self.mode not in MODES:
            raise ConfigError(f"deid.mode {self.mode!r}: expected one of {MODES}")
        if not 0.0 <= self.pattern_threshold <= 1.0:
            raise ConfigError("deid.pattern_threshold must be within [0, 1]")
        if self.tagger_threshold is not None and not 0.0 < self.tagger_threshold <= 1.0:
            raise ConfigError("deid.tagger_threshold must be within (0, 1]")
        if self.max_bytes <= 0 or self.date_shift_max_days <= 0:
            raise ConfigError("deid.max_bytes and deid.date_shift_max_days must be positive")
        if not MIN_WINDOW_CHARS <= self.window_chars <= SPACY_MAX_CHARS:
            raise ConfigError(f"deid.window_chars {self.window_chars}: expected "
                              f"{MIN_WINDOW_CHARS} to {SPACY_MAX_CHARS} characters")
        if self.max_note_chars <= 0:
            raise ConfigError("deid.max_note_chars must be positive")
        if self.workers < 0:
            raise ConfigError("deid.workers must be 0 (one per usable core) or a positive count")
        for column, action in self.identifier_columns:
            if action not in IDENTIFIER_ACTIONS:
                raise ConfigError(f"deid.identifier_columns.{column} {action!r}: expected one "
                                  f"of {IDENTIFIER_ACTIONS}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "") -> DeidConfig:
        """Settings from a ``[deid]`` table; ConfigError naming ``source`` (the file) and the
        key on an unknown key (listing the allowed ones), a wrong type or a bad value."""
        where = f"{source}: " if source else ""
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"{where}unknown deid setting(s) {sorted(unknown)}; "
                              f"allowed: {sorted(known)}")
        for key, value in data.items():
            if key not in _TABLES and not _has_type(value, str(known[key])):
                raise ConfigError(f"{where}deid.{key} must be {_TYPE_WORDS[str(known[key])]}, "
                                  f"got {value!r}")
        values = dict(data)
        columns = data.get("identifier_columns", {})
        if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
            raise ConfigError(f"{where}deid.identifier_columns must be a table of column = "
                              f"\"drop\" or \"hash\", got {columns!r}")
        values["identifier_columns"] = tuple(sorted(columns.items()))
        patterns = data.get("site_patterns", [])
        if not isinstance(patterns, list) or not all(isinstance(p, dict) for p in patterns):
            raise ConfigError(f"{where}deid.site_patterns must be a list of tables "
                              "([[deid.site_patterns]])")
        try:
            values["site_patterns"] = tuple(
                SitePattern(**{**p, "context": tuple(p.get("context", ()))})
                for p in patterns)
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"{where}deid.site_patterns: {e}") from e
        except ConfigError as e:
            if not source:
                raise
            raise ConfigError(f"{where}{e}") from e

    @classmethod
    def from_toml(cls, path: str | Path) -> DeidConfig:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read de-id settings ({e})") from e
        return cls.from_dict(data.get("deid", data), str(path))


_TYPE_WORDS = {"str": "a string", "str | None": "a string", "float": "a number",
               "float | None": "a number", "int": "an integer", "bool": "true or false"}
"""What each field annotation of :class:`DeidConfig` accepts from TOML, in words."""


def _has_type(value: Any, annotation: str) -> bool:
    """Whether a TOML ``value`` fits a :class:`DeidConfig` field annotation (bool is no number)."""
    if annotation == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if annotation.startswith("str"):
        return isinstance(value, str)
    if annotation.startswith("float"):
        return isinstance(value, int | float)
    return isinstance(value, int)
