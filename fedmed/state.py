"""The one git-ignored folder where fedmed keeps runtime state.

Flower's home, Ray's temporary files, site homes (``sites/<federation>/<site>``), the
simulated coordinator's home (``coordinator/``: its key and witness records) and
default run directories all live under it, so nothing lands in the user's home directory by
surprise. ``FEDMED_STATE`` overrides the default ``./.fedmed``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

STATE_ENV = "FEDMED_STATE"
# Ray puts Unix sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
# (~63 characters after <temp>) and Linux caps a socket path at 107 bytes.
RAY_TEMP_MAX_CHARS = 40


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


def sites_home_path(federation: str) -> Path:
    """``<state>/sites/<federation>``: where a federation's site homes live by default."""
    return state_root() / "sites" / federation


def site_home_path(federation: str, site: str) -> Path:
    """``<state>/sites/<federation>/<site>``: a site's home by default (simulated sites,
    ``fedmed node start``, ``fedmed deid scrub``)."""
    return sites_home_path(federation) / site


def coordinator_home_path(configured: str = "") -> Path:
    """The coordinator home: ``configured`` (``coordinator-home``) or ``<state>/coordinator``."""
    return Path(configured) if configured else state_dir("coordinator")


def witness_record_path(coordinator_home: Path, federation: str, sites_home: str = "") -> Path:
    """``<coordinator home>/witness/<federation>.json``: the last audit-log head the
    coordinator witnessed for each site of ``federation`` (``fedmed.server.witness``).

    ``sites_home`` (simulation only): simulated site homes kept elsewhere than
    ``<state>/sites/<federation>`` are other sites, witnessed in their own record
    ``<federation>-<12 hex of the folder's SHA-256>.json``.
    """
    name = federation
    if sites_home and Path(sites_home).resolve() != sites_home_path(federation).resolve():
        digest = hashlib.sha256(str(Path(sites_home).resolve()).encode()).hexdigest()[:12]
        name = f"{federation}-{digest}"
    return Path(coordinator_home) / "witness" / f"{name}.json"


def prepare_flower_environment() -> None:
    """Point Flower at folders we own and stop it installing packages at run time.

    ``flwr run`` otherwise installs the app's dependencies (measured here: a 5.6 GB
    CUDA torch) and keeps its home in ``~/.flwr``.
    """
    os.environ.setdefault("FLWR_HOME", str(state_dir("flwr")))
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def ray_temp_dir() -> Path:
    """Ray's temporary folder: ``<state>/ray``, reached through a short link when needed.

    A state folder deep in the file system (``/home/…/projects/…/.fedmed``) would push
    Ray's socket paths past Linux's 107-byte limit and the simulation would not start.
    Ray then gets ``<tmp>/fedmed-ray-<hash>``, a symbolic link to ``<state>/ray``: the
    files stay in the state folder, only the link is outside it.
    """
    target = state_dir("ray")
    if len(str(target)) <= RAY_TEMP_MAX_CHARS:
        return target
    digest = hashlib.sha256(str(target).encode()).hexdigest()[:12]
    link = Path(tempfile.gettempdir()) / f"fedmed-ray-{digest}"
    if not (link.is_symlink() and link.resolve() == target.resolve()):
        staging = link.with_name(f"{link.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        staging.symlink_to(target, target_is_directory=True)
        os.replace(staging, link)  # atomic: concurrent runs never see a half-made link
    return link
