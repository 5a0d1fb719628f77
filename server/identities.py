"""Which site each deployed node is: the coordinator's registry, never the node's own word.

A node's reply names its site (``site`` in :class:`fedmed.privacy.reply.FitReply`), but
that name comes from the node's ``kit.toml``, which the site operator can edit. What the
operator cannot change is the node key the SuperLink authenticated: provisioning binds
each site to one node key and one audit key, and ``fedmed coordinator start`` registers
the node keys and writes this table (``identities.json`` in the coordinator home:
SuperLink node id → site, audit-key fingerprint) from the kit
(:func:`fedmed.deploy.registry.reconcile`).

A deployed run (``registered-sites = true``, set by ``fedmed run --coordinator``) reads
the table; :class:`fedmed.server.recording.RecordingStrategy` then names every reply by
its node's registered site, tells each node which site and audit key it was registered
for (``registered-site``, ``registered-audit-key`` in the fit config: the node refuses
if it is not that site, ``fedmed.clients.private_round``), and drops — signing an
``identity-mismatch`` entry — a reply that names another site or carries another
audit key, or that comes from a node missing from the table. Without the table a
deployed run does not start: binding identities must not fail open.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from fedmed.config import Scalar
from fedmed.errors import ConfigError
from fedmed.outputs import write_bytes_durable
from fedmed.privacy.reply import REGISTERED_AUDIT_KEY, REGISTERED_SITE, FitReply

IDENTITIES_FILE = "identities.json"


@dataclass(frozen=True)
class NodeIdentity:
    """The site a node key was provisioned for, and that site's audit-key fingerprint."""

    site: str
    audit_key: str


class NodeIdentities:
    """The registry of deployed nodes: SuperLink node id (as text) → :class:`NodeIdentity`."""

    def __init__(self, nodes: Mapping[str, NodeIdentity]) -> None:
        self.nodes = dict(nodes)

    @classmethod
    def load(cls, path: Path) -> NodeIdentities:
        """The table at ``path``; ConfigError naming the file when it is missing or unreadable."""
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            nodes = {
                str(node): NodeIdentity(str(entry["site"]), str(entry["audit_key"]))
                for node, entry in document["nodes"].items()
            }
        except FileNotFoundError:
            raise ConfigError(
                f"{path}: no registry of node identities; a deployed run names each node by the "
                "site its key was provisioned for — start the coordinator with `fedmed "
                "coordinator start` (it registers the kit's nodes and writes this file)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{path}: the registry of node identities is unreadable ({exc}); run `fedmed "
                "coordinator register` to rewrite it from the kit"
            ) from None
        return cls(nodes)

    def save(self, path: Path) -> None:
        """Write the table durably (the coordinator reads it at every deployed run)."""
        document = {"nodes": {node: asdict(n) for node, n in sorted(self.nodes.items())}}
        write_bytes_durable(Path(path), (json.dumps(document, indent=2) + "\n").encode("utf-8"))

    def of(self, node_id: str) -> NodeIdentity | None:
        return self.nodes.get(str(node_id))

    def fit_config(self, node_id: str) -> dict[str, Scalar]:
        """What a node is told about itself (nothing for an unknown node: it is dropped)."""
        identity = self.of(node_id)
        if identity is None:
            return {}
        return {REGISTERED_SITE: identity.site, REGISTERED_AUDIT_KEY: identity.audit_key}

    def mismatch(self, node_id: str, reply: FitReply) -> str | None:
        """Why ``reply`` from node ``node_id`` cannot be its registered site's (None: it is)."""
        identity = self.of(node_id)
        if identity is None:
            return (
                f"node {node_id} is not in the coordinator's registry of node identities; "
                "run `fedmed coordinator register` after provisioning its site"
            )
        if reply.site != identity.site:
            return (
                f"node {node_id} is registered to {identity.site} but replied as "
                f"{reply.site or 'no site'}"
            )
        if reply.audit_key is not None and reply.audit_key != identity.audit_key:
            return (
                f"{identity.site} signed with audit key {reply.audit_key}, not the one "
                f"provisioned for it ({identity.audit_key})"
            )
        return None
