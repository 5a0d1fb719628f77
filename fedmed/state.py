"""The one git-ignored folder where fedmed keeps runtime state.

Flower's home, Ray's temporary files, simulated site homes and default run
directories all live under it, so nothing lands in the user's home directory by
surprise. ``FEDMED_STATE`` overrides the default ``./.fedmed``.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_ENV = "FEDMED_STATE"


def state_root() -> Path:
    """The state folder (created on first use)."""
    root = Path(os.environ.get(STATE_ENV, ".fedmed")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def state_dir(*parts: str) -> Path:
    """A sub-folder of the state folder (created on first use)."""
    path = state_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def prepare_flower_environment() -> None:
    """Point Flower at folders we own and stop it installing packages at run time.

    ``flwr run`` otherwise installs the app's dependencies (measured here: a 5.6 GB
    CUDA torch) and keeps its home in ``~/.flwr``.
    """
    os.environ.setdefault("FLWR_HOME", str(state_dir("flwr")))
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
