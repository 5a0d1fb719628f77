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
  to witness; a refusal signed in a log that still holds its witnessed head carries
  that head too.

A key is written only when its field is set; each field's key is its name with
dashes (``train_loss`` → ``train-loss``).

The way back: the coordinator keeps the last head it witnessed for each site (its
witness record, ``fedmed.server.witness``) and sends it with every round's fit config
under :data:`WITNESSED_HEADS` — a JSON object ``{site: {"seq": N, "hash": H}}``
(:func:`encode_witnessed`); the node reads its own entry (:func:`witnessed_head`) and
refuses to train when its log does not hold that head (a deleted, reset or restored
site home). Heads are not secret: each is a hash of a signed log entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedmed.config import Scalar
from fedmed.errors import ConfigError

# Fit-config key of the heads the coordinator witnessed (see the module docstring).
WITNESSED_HEADS = "witnessed-heads"
# Fit-config keys of a deployed node's identity, from the coordinator's registry: the site
# its node key was provisioned for and that site's audit-key fingerprint.
REGISTERED_SITE = "registered-site"
REGISTERED_AUDIT_KEY = "registered-audit-key"

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


@dataclass(frozen=True)
class WitnessedHead:
    """The last head of a site's audit log that the coordinator witnessed."""

    seq: int
    hash: str


def encode_witnessed(heads: Mapping[str, Mapping[str, Any]]) -> str:
    """The fit-config value of :data:`WITNESSED_HEADS`: ``{site: {seq, hash}}`` as JSON."""
    return json.dumps(
        {site: {"seq": int(h["seq"]), "hash": str(h["hash"])} for site, h in sorted(heads.items())},
        sort_keys=True,
        separators=(",", ":"),
    )


def witnessed_head(fit_config: Mapping[str, Any], site: str) -> WitnessedHead | None:
    """The head the coordinator witnessed for ``site`` (None: none yet, or an older
    coordinator); ConfigError when the value is malformed (the node then refuses)."""
    raw = fit_config.get(WITNESSED_HEADS)
    if raw is None or raw == "":
        return None
    try:
        heads = json.loads(str(raw))
        head = heads.get(site) if isinstance(heads, dict) else None
        if head is None:
            if not isinstance(heads, dict):
                raise TypeError("not a JSON object")
            return None
        seq, digest = head["seq"], head["hash"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise TypeError(f"seq {seq!r} is not a non-negative integer")
        if not isinstance(digest, str) or not digest:
            raise TypeError(f"hash {digest!r} is not a string")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{WITNESSED_HEADS}: malformed ({exc})") from None
    return WitnessedHead(seq, digest)


def _key(name: str) -> str:
    return name.replace("_", "-")
