"""``fedmed provision``: the federation CA, the coordinator's kit and one startup kit per site.

Run once by whoever operates the federation, on a trusted machine. The output
folder (layout: :mod:`fedmed.deploy.kit`) holds everything each party needs;
each site's folder is shipped to that hospital (and then deleted here: its private
keys belong to the site). Adding a site later creates one more kit and one more
public key for the coordinator, and re-issues nothing. Rotating a site's node key
replaces only that site's key pair.
"""

from __future__ import annotations

import datetime
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from fedmed.audit.keys import KEY_FILE, fingerprint, load_or_create_key, public_pem
from fedmed.deploy.errors import ProvisionError
from fedmed.deploy.kit import (
    AUDIT_KEYS_DIR,
    AUDIT_PUB,
    CA_CERT,
    CA_DIR,
    CA_KEY,
    COORDINATOR_CERT,
    COORDINATOR_DIR,
    COORDINATOR_KEY,
    DEFAULT_PORT,
    FEDERATION_FILE,
    KIT_FILE,
    NODE_KEY,
    NODE_KEYS_DIR,
    NODE_PUB,
    POLICY_FILE,
    SITE_AUDIT_KEYS_DIR,
    SITES_DIR,
    read_toml,
)
from fedmed.deploy.pki import (
    Issued,
    NodeKey,
    create_ca,
    issue_server_certificate,
    public_key_fingerprint,
    split_address,
    write_private,
    write_public,
)
from fedmed.privacy.policy import Policy

DEFAULT_ADDRESSES = (f"127.0.0.1:{DEFAULT_PORT}", f"localhost:{DEFAULT_PORT}")
SITE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class SiteCredentials:
    """What an operator announces out of band for one site (fingerprints only)."""

    site: str
    node_key: str
    audit_key: str


def normalise_addresses(addresses: list[str] | tuple[str, ...]) -> list[str]:
    """``host[:port]`` → ``host:port`` (default port 9092); at least one address."""
    result = []
    for address in addresses or DEFAULT_ADDRESSES:
        host, port = split_address(address)
        host_text = f"[{host}]" if ":" in host else host
        result.append(f"{host_text}:{port or DEFAULT_PORT}")
    return list(dict.fromkeys(result))


def check_site_name(site: str) -> str:
    if not SITE_NAME.match(site):
        raise ProvisionError(
            f"site name {site!r}: use lower-case letters, digits, '-' or '_' (max 63)"
        )
    return site


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def provision(
    out: Path,
    federation: str,
    sites: list[str],
    addresses: list[str] | tuple[str, ...] = (),
    allowed_tasks: tuple[str, ...] = ("*",),
) -> list[SiteCredentials]:
    """Write a new federation folder at ``out``; return each site's key fingerprints."""
    out = Path(out)
    if (out / FEDERATION_FILE).exists():
        raise ProvisionError(
            f"{out}: already provisioned; use --add-site to add a site without re-issuing"
        )
    if out.exists() and any(out.iterdir()):
        raise ProvisionError(f"{out}: folder exists and is not empty")
    if not sites:
        raise ProvisionError("--sites names no site")
    names = [check_site_name(s.strip()) for s in sites]
    if len(set(names)) != len(names):
        raise ProvisionError(f"a site is listed twice in {','.join(sites)}")
    check_site_name(federation)
    addrs = normalise_addresses(addresses)
    out.mkdir(parents=True, exist_ok=True)
    ca = create_ca(federation)
    write_public(out / CA_DIR / CA_CERT, ca.cert_pem)
    write_private(out / CA_DIR / CA_KEY, ca.key_pem)
    (out / CA_DIR).chmod(0o700)
    _write_coordinator_kit(out, federation, ca, addrs)
    _write_federation_file(out, federation, [], addrs, allowed_tasks)
    return [add_site(out, site) for site in names]


def _write_coordinator_kit(out: Path, federation: str, ca: Issued, addresses: list[str]) -> None:
    folder = out / COORDINATOR_DIR
    folder.mkdir(mode=0o700)
    server = issue_server_certificate(ca, federation, [split_address(a)[0] for a in addresses])
    write_public(folder / CA_CERT, ca.cert_pem)
    write_public(folder / COORDINATOR_CERT, server.cert_pem)
    write_private(folder / COORDINATOR_KEY, server.key_pem)
    (folder / NODE_KEYS_DIR).mkdir()
    audit_key = load_or_create_key(folder / AUDIT_KEYS_DIR)
    write_public(folder / AUDIT_PUB, public_pem(audit_key.public_key()))
    kit = {"role": "coordinator", "federation": federation, "addresses": addresses}
    _write_kit_file(folder, kit)


def _write_federation_file(
    out: Path,
    federation: str,
    sites: list[str],
    addresses: list[str],
    allowed_tasks: tuple[str, ...],
) -> None:
    document = {
        "name": federation,
        "sites": sites,
        "addresses": addresses,
        "allowed-tasks": list(allowed_tasks),
    }
    header = "# Written by fedmed provision; --add-site appends to `sites`.\n"
    text = header + tomli_w.dumps({"federation": document})
    write_public(out / FEDERATION_FILE, text.encode())


def _write_kit_file(folder: Path, kit: dict[str, Any]) -> None:
    write_public(folder / KIT_FILE, tomli_w.dumps({"kit": {**kit, "created": _stamp()}}).encode())


def _federation(out: Path) -> dict[str, Any]:
    path = Path(out) / FEDERATION_FILE
    if not path.is_file():
        raise ProvisionError(f"{out}: not a provisioned federation (no {FEDERATION_FILE})")
    return read_toml(path)["federation"]


def add_site(out: Path, site: str) -> SiteCredentials:
    """One more site kit and its public key for the coordinator; nothing else changes."""
    out = Path(out)
    federation = _federation(out)
    site = check_site_name(site)
    folder = out / SITES_DIR / site
    if folder.exists() or (out / COORDINATOR_DIR / NODE_KEYS_DIR / f"{site}.pub").exists():
        raise ProvisionError(f"site {site!r} is already provisioned in {out}")
    folder.mkdir(parents=True, mode=0o700)
    _write_site_base(out, federation, site, folder)
    node_key = _write_node_key(out, folder, federation["name"], site)
    audit_key = load_or_create_key(folder / AUDIT_KEYS_DIR)
    audit_pem = public_pem(audit_key.public_key())
    write_public(folder / AUDIT_PUB, audit_pem)
    # The coordinator kit anchors the site's audit key (fedmed audit verify --kit).
    write_public(out / COORDINATOR_DIR / SITE_AUDIT_KEYS_DIR / f"{site}.pub", audit_pem)
    policy = Policy(allowed_tasks=tuple(federation.get("allowed-tasks", ["*"])))
    write_public(folder / POLICY_FILE, policy.to_toml().encode())
    _write_federation_file(
        out,
        federation["name"],
        [*federation["sites"], site],
        list(federation["addresses"]),
        tuple(federation.get("allowed-tasks", ["*"])),
    )
    return SiteCredentials(site, node_key, fingerprint(audit_key.public_key()))


def _write_node_key(out: Path, folder: Path, federation: str, site: str) -> str:
    key = NodeKey.generate(comment=f"fedmed-{federation}-{site}")
    write_private(folder / NODE_KEY, key.private_openssh)
    write_public(folder / NODE_PUB, key.public_openssh)
    write_public(out / COORDINATOR_DIR / NODE_KEYS_DIR / f"{site}.pub", key.public_openssh)
    return public_key_fingerprint(key.public_openssh)


def rotate_node_key(out: Path, site: str) -> SiteCredentials:
    """A new node key pair for ``site`` (the old private key is deleted).

    The coordinator registers the new public key and unregisters the old one at its
    next ``fedmed coordinator register`` (or start); the site restarts its node
    with the new kit.
    """
    out = Path(out)
    federation = _federation(out)
    if check_site_name(site) not in federation["sites"]:
        raise ProvisionError(f"site {site!r} is not provisioned in {out}")
    folder = out / SITES_DIR / site
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)  # the shipped kit may be gone
    _write_site_base(out, federation, site, folder)
    for name in (NODE_KEY, NODE_PUB):
        (folder / name).unlink(missing_ok=True)
    (out / COORDINATOR_DIR / NODE_KEYS_DIR / f"{site}.pub").unlink(missing_ok=True)
    node_key = _write_node_key(out, folder, federation["name"], site)
    audit_file = folder / AUDIT_KEYS_DIR / KEY_FILE
    audit = ""
    if audit_file.exists():
        audit = fingerprint(load_or_create_key(audit_file.parent).public_key())
    return SiteCredentials(site, node_key, audit)


def _write_site_base(out: Path, federation: dict[str, Any], site: str, folder: Path) -> None:
    """The CA certificate and ``kit.toml`` of a site kit."""
    shutil.copyfile(out / CA_DIR / CA_CERT, folder / CA_CERT)
    kit = {
        "role": "site",
        "federation": federation["name"],
        "site": site,
        "addresses": list(federation["addresses"]),
    }
    _write_kit_file(folder, kit)
