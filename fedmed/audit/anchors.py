"""Trust anchors: the audit keys a federation provisioned, by party.

A log proves only that the key stored beside it signed it; whoever can replace the log
can replace that key too. Provisioning (``fedmed provision``) records every party's
audit public key in the coordinator kit — its own (``audit-ed25519.pub``) and each
site's (``site-audit-keys/<site>.pub``) — so an auditor holding the kit can require
that each log is signed by the key provisioned for its party
(``fedmed audit verify --kit``, :func:`fedmed.audit.verify.verify_federation`).

Parties are named as in each log's first entry: ``coordinator`` and ``site:<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

COORDINATOR = "coordinator"


def site_party(site: str) -> str:
    """The party name a site's log starts with."""
    return f"site:{site}"


@dataclass(frozen=True)
class TrustAnchors:
    """Party → the fingerprint of its provisioned audit key, read from ``source``."""

    source: Path
    keys: dict[str, str]

    def parties(self) -> list[str]:
        return sorted(self.keys)

    def problem(self, party: str, key: str) -> str | None:
        """Why a log of ``party`` signed by ``key`` is not anchored (None: it is)."""
        expected = self.keys.get(party)
        if expected is None:
            return (
                f"party {party or '(unnamed)'} is not provisioned in {self.source}: its key "
                f"{key} is unknown"
            )
        if expected != key:
            return (
                f"signed by key {key}, but {self.source} provisioned key {expected} for "
                f"{party}: the key was replaced"
            )
        return None
