"""A node's reply to one training round, as the node writes it and the coordinator reads it.

The counterpart of :class:`fedmed.privacy.job.DPJob` (the request): one typed
:class:`FitReply` that ``fedmed.clients.private_round`` turns into the fit metrics
(:meth:`FitReply.to_metrics`) and ``fedmed.server.recording`` reads back
(:meth:`FitReply.from_metrics`), so the two sides cannot drift apart. The wire
format is the contract of ``fedmed.clients.app``; deployed nodes and recorded runs
(``metrics.json``) rely on it, so key names, value types and key order are fixed:

- always ``site`` and ``refused`` (1 or 0);
- a refusal: ``reason``, and the site's ε account (``epsilon``, ``delta``,
  ``epsilon-budget``, ``accountant``) when its policy and ledger were readable;
- an accepted round: ``train-loss``, ``steps``, ``device``, the ε account, the
  mechanism (``noise-multiplier``, ``sample-rate``, ``clip-norm``) and the head of the
  site's audit log (``audit-key``, ``audit-seq``, ``audit-hash``) for the coordinator
  to witness.

A key is written only when its field is set; each field's key is its name with
dashes (``train_loss`` → ``train-loss``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedmed.config import Scalar

# Fields recorded per site as its privacy summary (metrics.json ``privacy.<site>``).
PRIVACY_FIELDS = (
    "epsilon",
    "delta",
    "epsilon_budget",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "clip_norm",
)


@dataclass(frozen=True)
class FitReply:
    """The metrics of one fit reply (see the module docstring); ``None`` means "not sent".

    Field order is the wire order.
    """

    site: str
    refused: bool = False
    reason: str | None = None
    train_loss: float | None = None
    steps: int | None = None
    device: str | None = None  # cpu or cuda: operators see where each site trained
    epsilon: float | None = None  # the site's total ε after this round, all runs
    delta: float | None = None
    epsilon_budget: float | None = None
    accountant: str | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    clip_norm: float | None = None
    audit_key: str | None = None
    audit_seq: int | None = None
    audit_hash: str | None = None

    def to_metrics(self) -> dict[str, Scalar]:
        """The reply's metrics as Flower carries them (``refused`` as 1 or 0)."""
        metrics: dict[str, Scalar] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "refused":
                value = int(value)
            if value is not None:
                metrics[_key(field.name)] = value
        return metrics

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> FitReply:
        """Read a node's reply; unknown keys are ignored, missing ones are ``None``.

        Values are kept as the node sent them (only ``site`` and ``refused`` are
        normalised): the coordinator records what a site replied, it does not repair it.
        """
        values = {
            field.name: metrics[_key(field.name)]
            for field in fields(cls)
            if _key(field.name) in metrics
        }
        values["site"] = str(values.get("site", ""))
        values["refused"] = bool(values.get("refused", 0))
        return cls(**values)

    def privacy(self) -> dict[str, Any]:
        """The privacy fields the reply carries, by field name (a site's privacy summary)."""
        return {
            name: getattr(self, name) for name in PRIVACY_FIELDS if getattr(self, name) is not None
        }

    def audit_head(self) -> dict[str, Any] | None:
        """The site's audit-log head (``key``, ``seq``, ``hash``), if the reply names all three."""
        head = {"key": self.audit_key, "seq": self.audit_seq, "hash": self.audit_hash}
        return None if any(value is None for value in head.values()) else head


def _key(name: str) -> str:
    return name.replace("_", "-")
