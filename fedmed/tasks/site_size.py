"""The ``train-size`` pack setting: how many training examples each built-in site holds.

Why: DP-SGD's utility depends on how many examples a site trains on (at a fixed ε, more
examples mean a smaller sampling rate and less noise per step), so a hospital needs curves of
score against examples per site (docs/privacy.md § DP recipes and curves). The built-in,
simulated sites of the ECG, imaging, ICD and de-id NER packs hold a few hundred examples each;
``--set train-size=5000`` draws that many training examples per site from the same simulated
hospital, while the **test split stays the built-in one**, so every size is scored on the same
examples. It sizes simulated data only: a site that reads its own data (``data-dir``) has the
size of its data, and asking for another is a ConfigError rather than a silent no-op.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fedmed.config import Scalar
from fedmed.errors import ConfigError

SETTING = "train-size"


def parse_train_size(settings: Mapping[str, Scalar]) -> int | None:
    """``train-size`` as a positive count, or None when it is left out (the built-in size)."""
    if SETTING not in settings:
        return None
    value = settings[SETTING]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{SETTING} must be a whole number >= 1, got {value!r}")
    return value


def refuse_with_data_dir(train_size: int | None, data_dir: Path | None) -> None:
    """ConfigError when ``train-size`` is given for a site that reads its own data."""
    if train_size is not None and data_dir is not None:
        raise ConfigError(
            f"{SETTING} sizes the built-in simulated sites; a site read from data-dir "
            f"{data_dir} trains on all of its own data (leave {SETTING} out)"
        )


def train_size_only(task: str, settings: Mapping[str, Scalar]) -> int | None:
    """The settings of a pack whose only setting is ``train-size``: ConfigError on any other."""
    others = sorted(set(settings) - {SETTING})
    if others:
        raise ConfigError(f"task {task!r} takes only {SETTING}; not {', '.join(others)}")
    return parse_train_size(settings)
