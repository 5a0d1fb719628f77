"""The last update a site released in each run, kept so a repeated round costs no privacy.

Why: the coordinator may ask for a round the site already trained — a resumed run whose
coordinator died after the site replied, a message delivered twice, or a replay by
someone who wants the site to spend ε off the record. Training again would be a second
release (more ε), and one the coordinator may never witness, so a restore from a backup
could later hide it. Re-sending the very update already released costs nothing more:
under differential privacy, repeating an output is post-processing of the same release.
So the node keeps the update it released last in each run (``released/<run digest>.npz``
in the site home, 0600, written durably before the release is signed) and answers a
repeated ``(run, round)`` with it, signing a ``release-repeated`` entry; without the kept
update it refuses rather than release twice (``fedmed.clients.private_round``).

The update is exactly what already left the site, so keeping it at the site adds no
exposure beyond the site's own data.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmed.outputs import write_bytes_durable
from fedmed.tasks.base import fingerprint_arrays

RELEASED_DIR = "released"


@dataclass(frozen=True)
class KeptRelease:
    """A released update: its round, arrays and SHA-256 (:func:`fingerprint_arrays`)."""

    round: int
    weights: list[np.ndarray]
    sha256: str


def _path(home: Path, run: str) -> Path:
    """One file per run; the run id comes from the coordinator, so only its digest names it."""
    return Path(home) / RELEASED_DIR / f"{hashlib.sha256(run.encode()).hexdigest()[:32]}.npz"


def keep(home: Path, run: str, server_round: int, weights: Sequence[np.ndarray]) -> str:
    """Keep ``weights`` as the update released in ``run``'s round (replacing the run's
    previous one); returns their SHA-256, which the signed ``dp-release`` records."""
    arrays = [np.asarray(w) for w in weights]
    buffer = io.BytesIO()
    np.savez(buffer, *arrays, round=np.int64(server_round))
    path = _path(home, run)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_bytes_durable(path, buffer.getvalue())
    path.chmod(0o600)
    return fingerprint_arrays(arrays)


def kept(home: Path, run: str, server_round: int) -> KeptRelease | None:
    """The update kept for ``run`` if it is the one of ``server_round`` (None otherwise, or
    when the file is missing or unreadable: the caller then refuses the repeat)."""
    path = _path(home, run)
    try:
        with np.load(path, allow_pickle=False) as archive:
            if int(archive["round"]) != server_round:
                return None
            count = len(archive.files) - 1
            weights = [archive[f"arr_{i}"] for i in range(count)]
    except (OSError, ValueError, KeyError):
        return None
    return KeptRelease(server_round, weights, fingerprint_arrays(weights))
