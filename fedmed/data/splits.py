"""Reproducible train/test splits shared by the task packs."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test rows, stratified by label, reproducible for ``seed``."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        rng.shuffle(rows)
        is_test[rows[: int(round(len(rows) * test_fraction))]] = True
    return is_test
