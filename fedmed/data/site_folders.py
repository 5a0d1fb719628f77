"""Which sites a real-data folder holds: one sub-folder per hospital, told by a marker.

Every pack that reads real data lays it out as ``<data_dir>/<site>/…`` with one file or
folder that says "this is a site" (``labels.csv``, ``pairs.npz``, ``notes.jsonl``,
``images``). One function finds them, so every pack reports a missing or empty data
folder the same way.
"""

from __future__ import annotations

from pathlib import Path

from fedmed.errors import DataError


def site_folders(data_dir: Path, marker: str) -> list[str]:
    """Names of the sub-folders of ``data_dir`` that contain ``marker`` (a file or folder)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found")
    sites = sorted(p.name for p in data_dir.iterdir() if (p / marker).exists())
    if not sites:
        raise DataError(f"{data_dir}: no site folders containing {marker}")
    return sites
