"""Where training runs: CUDA when a GPU is present (GPU hospitals), else the CPU."""

from __future__ import annotations

import os

import torch


def pick_device() -> torch.device:
    """``FEDMED_DEVICE`` if set (e.g. ``cpu`` to force), else ``cuda`` when available."""
    requested = os.environ.get("FEDMED_DEVICE")
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
