"""The layout of a provisioned federation folder, and reading its startup kits.

One place names every file, so ``provision``, ``coordinator start``, ``node start``
and ``run --coordinator`` can never disagree::

    OUT/
      federation.toml               name, sites, coordinator addresses
      ca/ca.crt  ca/ca.key          the federation CA (keep ca.key offline: it is only
                                    needed to re-issue the coordinator certificate)
      coordinator/                  the coordinator's kit
        kit.toml  ca.crt
        coordinator.crt  coordinator.key        TLS (SANs = the addresses)
        node-keys/<site>.pub                    the nodes it registers (OpenSSH EC)
        site-audit-keys/<site>.pub              each site's audit public key: the
                                                trust anchor of `fedmed audit verify --kit`
        keys/audit-ed25519.pem                  its audit signing key
      sites/<site>/                 one startup kit per hospital, shipped to it
        kit.toml  ca.crt
        node-auth.key  node-auth.pub            its node authentication key pair
        keys/audit-ed25519.pem                  its audit signing key
        policy.toml                             privacy policy template (edit before start)

Private keys are 0600 in 0700 folders. A kit folder is self-contained: a site
needs only its own ``sites/<site>`` folder.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmed.audit.anchors import COORDINATOR, TrustAnchors, site_party
from fedmed.audit.keys import AuditError, fingerprint, load_public_key
from fedmed.deploy.errors import ProvisionError

FEDERATION_FILE = "federation.toml"
KIT_FILE = "kit.toml"
CA_DIR = "ca"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
COORDINATOR_DIR = "coordinator"
COORDINATOR_CERT = "coordinator.crt"
COORDINATOR_KEY = "coordinator.key"
NODE_KEYS_DIR = "node-keys"
SITES_DIR = "sites"
NODE_KEY = "node-auth.key"
NODE_PUB = "node-auth.pub"
AUDIT_KEYS_DIR = "keys"
SITE_AUDIT_KEYS_DIR = "site-audit-keys"
AUDIT_PUB = "audit-ed25519.pub"
POLICY_FILE = "policy.toml"
DEFAULT_PORT = 9092


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProvisionError(f"{path}: not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProvisionError(f"{path}: invalid TOML ({exc})") from None
    except OSError as exc:
        raise ProvisionError(f"{path}: unreadable ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class CoordinatorKit:
    """The coordinator's folder of a provisioned federation."""

    root: Path
    federation: str
    addresses: tuple[str, ...]

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def cert(self) -> Path:
        return self.root / COORDINATOR_CERT

    @property
    def key(self) -> Path:
        return self.root / COORDINATOR_KEY

    @property
    def audit_keys(self) -> Path:
        return self.root / AUDIT_KEYS_DIR

    def node_keys(self) -> dict[str, Path]:
        """Site name → public key file, for every node the coordinator must register."""
        folder = self.root / NODE_KEYS_DIR
        return {p.stem: p for p in sorted(folder.glob("*.pub"))} if folder.is_dir() else {}

    @property
    def audit_pub(self) -> Path:
        """The coordinator's own audit public key."""
        return self.root / AUDIT_PUB

    def site_audit_keys(self) -> dict[str, Path]:
        """Site name → the audit public key provisioned for it (PEM text, ``.pub``)."""
        folder = self.root / SITE_AUDIT_KEYS_DIR
        return {p.stem: p for p in sorted(folder.glob("*.pub"))} if folder.is_dir() else {}

    def trust_anchors(self) -> TrustAnchors:
        """Every party's provisioned audit key (``fedmed audit verify --kit``); ProvisionError
        naming the file when one is missing or unreadable."""
        files = {COORDINATOR: self.audit_pub}
        files.update({site_party(site): path for site, path in self.site_audit_keys().items()})
        if len(files) == 1:
            raise ProvisionError(
                f"{self.root}: the kit records no site audit keys ({SITE_AUDIT_KEYS_DIR}/); "
                "provision the sites with this version of fedmed"
            )
        try:
            keys = {party: fingerprint(load_public_key(path)) for party, path in files.items()}
        except AuditError as exc:
            raise ProvisionError(str(exc)) from None
        return TrustAnchors(self.root, keys)


@dataclass(frozen=True)
class SiteKit:
    """One hospital's startup kit."""

    root: Path
    federation: str
    site: str
    addresses: tuple[str, ...]

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def node_key(self) -> Path:
        return self.root / NODE_KEY

    @property
    def node_pub(self) -> Path:
        return self.root / NODE_PUB

    @property
    def audit_keys(self) -> Path:
        return self.root / AUDIT_KEYS_DIR

    @property
    def policy(self) -> Path:
        return self.root / POLICY_FILE


def _kit_document(folder: Path, role: str) -> dict[str, Any]:
    """The ``[kit]`` table of ``folder/kit.toml``, checked: role, names and addresses."""
    path = folder / KIT_FILE
    document = read_toml(path).get("kit", {})
    if not isinstance(document, dict):
        raise ProvisionError(f"{path}: 'kit' must be a table ([kit])")
    if document.get("role") != role:
        raise ProvisionError(
            f"{folder}: not a {role} kit (kit.toml says role {document.get('role')!r})"
        )
    names = ("federation", "site") if role == "site" else ("federation",)
    for name in names:
        if not isinstance(document.get(name), str) or not document[name].strip():
            raise ProvisionError(f"{path}: kit.{name} must be a non-empty string")
    addresses = document.get("addresses")
    if (
        not isinstance(addresses, list)
        or not addresses
        or not all(isinstance(a, str) and a.strip() for a in addresses)
    ):
        raise ProvisionError(f"{path}: kit.addresses must be a non-empty list of host:port strings")
    return document


def load_coordinator_kit(folder: Path) -> CoordinatorKit:
    """The coordinator kit at ``folder`` (or ``folder/coordinator`` for a provisioned root)."""
    folder = Path(folder)
    if (folder / FEDERATION_FILE).is_file():
        folder = folder / COORDINATOR_DIR
    if not (folder / KIT_FILE).is_file():
        raise ProvisionError(f"{folder}: no {KIT_FILE}; expected a folder made by fedmed provision")
    document = _kit_document(folder, "coordinator")
    kit = CoordinatorKit(
        folder.resolve(), str(document["federation"]), tuple(document["addresses"])
    )
    for path in (kit.ca_cert, kit.cert, kit.key):
        if not path.is_file():
            raise ProvisionError(f"{path}: missing from the coordinator kit")
    return kit


def load_site_kit(folder: Path) -> SiteKit:
    """A site's startup kit (``OUT/sites/<site>``)."""
    folder = Path(folder)
    if (folder / FEDERATION_FILE).is_file():
        sites = sorted(p.name for p in (folder / SITES_DIR).iterdir() if p.is_dir())
        raise ProvisionError(
            f"{folder} is the whole federation; pass one site's kit, e.g. "
            f"{folder / SITES_DIR / (sites[0] if sites else '<site>')}"
        )
    if not (folder / KIT_FILE).is_file():
        raise ProvisionError(
            f"{folder}: no {KIT_FILE}; expected a site kit made by fedmed provision"
        )
    document = _kit_document(folder, "site")
    kit = SiteKit(
        folder.resolve(),
        str(document["federation"]),
        str(document["site"]),
        tuple(document["addresses"]),
    )
    for path in (kit.ca_cert, kit.node_key):
        if not path.is_file():
            raise ProvisionError(f"{path}: missing from the site kit")
    return kit


def find_ca_cert(folder: Path) -> Path:
    """The federation CA certificate in any kit folder (root, coordinator or site)."""
    folder = Path(folder)
    for candidate in (
        folder / CA_CERT,
        folder / COORDINATOR_DIR / CA_CERT,
        folder / CA_DIR / CA_CERT,
    ):
        if candidate.is_file():
            return candidate.resolve()
    raise ProvisionError(f"{folder}: no {CA_CERT}; pass a folder made by fedmed provision")
