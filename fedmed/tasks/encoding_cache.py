"""A site's frozen-encoder outputs, kept beside its admitted notes so no process pays twice.

Why: the packs that read notes through a frozen pretrained encoder (``icd-minilm``,
``icd-sentences``) would otherwise run it again in every process that loads the site — a
deployed node starts a fresh ClientApp per round, a simulation a fresh actor per federation —
tens of seconds to minutes each time.

The file name hashes what decides the output (the caller's ``key``: the input and the
encoder's identity), so other notes or another encoder version never read a stale file. The
file holds derived patient text, so it is written like the admitted notes: mode 0600,
atomically (concurrent simulated nodes of one site may race to write it). A file that cannot
be read back whole, or holds a tensor of the wrong shape, is computed again and replaced.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import torch

from fedmed.data.private_files import write_private


def kept_tensor(folder: Path, prefix: str, key: bytes, shape: tuple[int, ...],
                compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor ``compute()`` returns, read from ``folder`` when it was kept there under
    ``key`` with ``shape``; otherwise computed and kept."""
    path = folder / f"{prefix}-{hashlib.sha256(key).hexdigest()[:32]}.pt"
    try:
        kept = torch.load(path, weights_only=True)
        if isinstance(kept, torch.Tensor) and tuple(kept.shape) == shape:
            return kept
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        pass  # absent or unreadable: computed again below
    tensor = compute()
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, buffer.getvalue())
    return tensor
