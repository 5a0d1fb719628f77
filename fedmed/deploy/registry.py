"""Keep the SuperLink's registered nodes equal to the coordinator kit's ``node-keys/``.

With ``--enable-supernode-auth`` a SuperNode may connect only if its public key was
registered (``flwr supernode register KEY``) — Flower 1.42 has no file of
authorized keys any more (``--auth-list-public-keys`` is deprecated). The
SuperLink keeps registrations in its database; fedmed remembers which node id each
kit key got (``registered.json`` in the coordinator state folder) so that a key
removed from the kit — a rotated or retired site — is unregistered again.

From the same records it writes the coordinator's registry of node identities
(``coordinator/identities.json``, :mod:`fedmed.server.identities`): node id → the site
that key was provisioned for and that site's audit-key fingerprint (the kit's
``site-audit-keys/``). Deployed runs name every reply by it, never by the node's word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedmed.audit.keys import fingerprint as audit_fingerprint
from fedmed.audit.keys import load_public_key
from fedmed.deploy.errors import DeployError
from fedmed.deploy.flwr_cli import CONNECTION, Connection
from fedmed.deploy.kit import CoordinatorKit
from fedmed.deploy.pki import public_key_fingerprint
from fedmed.server.identities import IDENTITIES_FILE, NodeIdentities, NodeIdentity

REGISTRY_FILE = "registered.json"
ALREADY = "already in use"


@dataclass
class Reconciled:
    """What one reconciliation did, by site."""

    registered: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    unregistered: list[str] = field(default_factory=list)


def _load(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(f"{path}: unreadable ({exc}); delete it to re-register") from None
    return document if isinstance(document, dict) else {}


def reconcile(kit: CoordinatorKit, connection: Connection, state: Path) -> Reconciled:
    """Register every kit key not yet registered; unregister keys no longer in the kit."""
    path = Path(state) / REGISTRY_FILE
    records = _load(path)
    wanted = {
        public_key_fingerprint(key_file.read_bytes()): (site, key_file)
        for site, key_file in kit.node_keys().items()
    }
    outcome = Reconciled()
    for fingerprint, record in list(records.items()):
        if fingerprint in wanted:
            continue
        node_id = record.get("node_id", "")
        if node_id:
            document = connection.run_json(["supernode", "unregister", node_id, CONNECTION])
            if not document.get("success"):
                raise DeployError(
                    f"could not unregister the old key of {record.get('site')}: "
                    f"{_last_line(document)}"
                )
        outcome.unregistered.append(record.get("site", "?"))
        del records[fingerprint]
        _save(path, records)
    for fingerprint, (site, key_file) in wanted.items():
        if fingerprint in records:
            outcome.known.append(site)
            continue
        document = connection.run_json(
            ["supernode", "register", str(key_file), CONNECTION, "--name", site]
        )
        if document.get("success"):
            node_id = str(document.get("node-id", ""))
            outcome.registered.append(site)
        elif ALREADY in str(document.get("error-message", "")):
            node_id = ""  # registered before this state folder kept records
            outcome.known.append(site)
        else:
            raise DeployError(f"could not register {site}'s node key: {_last_line(document)}")
        records[fingerprint] = {"site": site, "node_id": node_id, "key": str(key_file)}
        _save(path, records)
    identities(kit, records).save(Path(state) / "coordinator" / IDENTITIES_FILE)
    return outcome


def identities(kit: CoordinatorKit, records: dict[str, dict[str, str]]) -> NodeIdentities:
    """Node id → site and provisioned audit key, for every registered key with a known id.

    A key registered before this state folder kept records has no id here; its node's
    replies are then dropped as unknown (``fedmed.server.identities``), never trusted.
    """
    audit_keys = kit.site_audit_keys()
    nodes: dict[str, NodeIdentity] = {}
    for record in records.values():
        site, node_id = record.get("site", ""), record.get("node_id", "")
        if site not in audit_keys:
            raise DeployError(
                f"{kit.root}: the coordinator kit records no audit key for site {site!r} "
                f"(site-audit-keys/{site}.pub); copy the site kit's audit-ed25519.pub there"
            )
        if node_id:
            key = audit_fingerprint(load_public_key(audit_keys[site]))
            nodes[node_id] = NodeIdentity(site, key)
    return NodeIdentities(nodes)


def _last_line(document: dict[str, object]) -> str:
    """The last line of the Flower CLI's error message (the line that says what failed)."""
    lines = str(document.get("error-message", "")).strip().splitlines()
    return lines[-1] if lines else "no error message"


def _save(path: Path, records: dict[str, dict[str, str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2), encoding="utf-8")
    tmp.replace(path)
