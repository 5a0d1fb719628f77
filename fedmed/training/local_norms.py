"""Local normalisation layers: what a site keeps for itself on top of the federated model.

One of two answers to domain shift (one scanner, ECG cart or note template per hospital),
both measured by ``fedmed generalization`` (docs/results.md); the other, local fine-tuning,
is :mod:`fedmed.studies.fine_tuning`.

* **Local normalisation layers** (FedBN, Li et al., ICLR 2021). The affine parameters
  of every normalisation layer stay at the site: the node puts its own values back
  over the coordinator's averaged ones before it trains or evaluates, and keeps the
  trained values in its site home. FedBN used BatchNorm; DP-SGD cannot (per-sample
  gradients do not exist through batch statistics), so the packs use GroupNorm and
  this works with and without DP. The site still *sends* these entries: SecAgg+ needs
  the same vector from every node, and their average is the starting point of a site
  that joins later. They are trained under the same DP-SGD as every other weight.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
PERSONAL_DIR = "personal"


def norm_positions(model: nn.Module) -> list[int]:
    """Positions, in state-dict order, of the normalisation layers' parameters and buffers."""
    modules = model.named_modules()
    prefixes = [f"{name}." for name, module in modules if isinstance(module, NORM_TYPES)]
    return [
        index
        for index, key in enumerate(model.state_dict())
        if any(key.startswith(prefix) for prefix in prefixes)
    ]


@dataclass(frozen=True)
class LocalNorms:
    """One site's own normalisation entries for one run, kept in its site home."""

    path: Path

    @classmethod
    def of(cls, home_root: Path, run_id: str) -> LocalNorms:
        """The store of ``run_id`` in the site home ``home_root``.

        The run id comes from the coordinator, so the file is named by its hash: no run id
        can steer the write outside ``personal/``.
        """
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:24]
        return cls(Path(home_root) / PERSONAL_DIR / f"run-{digest}-local-norm.npz")

    def load(self) -> dict[int, np.ndarray]:
        """The stored entries by position; empty before the site's first round of the run."""
        if not self.path.is_file():
            return {}
        with np.load(self.path, allow_pickle=False) as stored:
            return {int(key): stored[key] for key in stored.files}

    def apply(self, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``weights`` with this site's normalisation entries in place of the averaged ones."""
        result = [np.asarray(w) for w in weights]
        for position, value in self.load().items():
            if position >= len(result) or result[position].shape != value.shape:
                raise ValueError(
                    f"{self.path}: stored local normalisation entry {position} does not fit "
                    "the model received; was the run started with another model?"
                )
            result[position] = value
        return result

    def save(self, weights: Sequence[np.ndarray], positions: Sequence[int]) -> None:
        """Keep the entries at ``positions`` of ``weights`` (atomically: a crash keeps the old)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **{str(p): np.asarray(weights[p]) for p in positions})
        partial = self.path.with_suffix(".partial")
        partial.write_bytes(buffer.getvalue())
        os.replace(partial, self.path)

