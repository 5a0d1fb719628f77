"""Certificates and keys for a federation, in the formats Flower 1.42 reads.

Why each format:

- The coordinator's TLS certificate is an X.509 certificate signed by the
  federation's own CA: ``flower-superlink --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile``
  read PEM, and ``flower-supernode --root-certificates`` checks the coordinator's
  certificate against that CA and its subject alternative names (SANs) against the
  address the node dials — so every address a node may use must be a SAN.
- A node's authentication key is an EC key on a NIST curve in **OpenSSH** format:
  ``flower-supernode --auth-supernode-private-key`` loads it with
  ``load_ssh_private_key`` and ``flwr supernode register`` reads the public half with
  ``load_ssh_public_key`` (``ecdsa-sha2-nistp384 ...``).
- Private keys are written 0600 through ``O_EXCL`` so an existing key is never
  overwritten by accident (rotating is an explicit, separate step).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmed.deploy.errors import ProvisionError

CURVE = ec.SECP384R1
CA_DAYS = 3650


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def create_ca(federation: str, days: int = CA_DAYS) -> Issued:
    """A self-signed CA that only signs this federation's coordinator certificate."""
    key = ec.generate_private_key(CURVE())
    name = _name(f"fedmed {federation} CA", f"fedmed federation {federation}")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def split_address(address: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port`` or a bare host → (host, port or None)."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.lstrip(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:  # a bare host or a bare IPv6 address
        host, port = address, ""
    if not host:
        raise ProvisionError(f"address {address!r} names no host")
    if port and not port.isdigit():
        raise ProvisionError(f"address {address!r}: port {port!r} is not a number")
    return host, int(port) if port else None


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server_certificate(
    ca: Issued, federation: str, hosts: list[str], days: int = 825
) -> Issued:
    """The coordinator's TLS certificate, valid for every host in ``hosts`` (SANs)."""
    if not hosts:
        raise ProvisionError("the coordinator certificate needs at least one address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ProvisionError("the federation CA key is not an EC key")
    key = ec.generate_private_key(CURVE())
    now = _now()
    unique = list(dict.fromkeys(hosts))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"fedmed {federation} coordinator", f"fedmed federation {federation}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in unique]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def certificate_hosts(cert_pem: bytes) -> list[str]:
    """The SANs of a certificate as strings (what a node may dial)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in sans.get_values_for_type(x509.IPAddress)] + list(
        sans.get_values_for_type(x509.DNSName)
    )


@dataclass(frozen=True)
class NodeKey:
    """A node's authentication key pair in OpenSSH format (what Flower reads)."""

    private_openssh: bytes
    public_openssh: bytes

    @classmethod
    def generate(cls, comment: str = "") -> NodeKey:
        key = ec.generate_private_key(CURVE())
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        if comment:
            public += b" " + comment.encode()
        return cls(private, public + b"\n")


def public_key_fingerprint(public_openssh: bytes) -> str:
    """``SHA256:<hex>`` of the key material (the comment is ignored)."""
    key = serialization.load_ssh_public_key(public_openssh.strip())
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def check_node_private_key(path: Path) -> None:
    """ProvisionError unless ``path`` is a 0600 OpenSSH EC key that flower-supernode accepts."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ProvisionError(
            f"{path}: private key is readable by others (mode {mode:o}); chmod 600"
        )
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, OSError) as exc:
        raise ProvisionError(f"{path}: not an OpenSSH private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ProvisionError(f"{path}: Flower needs an EC (NIST curve) key, got {type(key)}")


def write_private(path: Path, data: bytes) -> None:
    """Write a private file 0600; never replace an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ProvisionError(f"{path}: already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_public(path: Path, data: bytes) -> None:
    """Write a public file (certificate, public key, template) 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)
