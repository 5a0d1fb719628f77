"""Each party's Ed25519 signing key, created on first use.

The private key stays in the party's home (``keys/audit-ed25519.pem``, file mode
0600 in a 0700 folder) and never travels. The public key is written beside every log
it signs (``<log>.pub``), so a verifier needs only the folder; a privacy officer who
wants more than integrity (authenticity) compares the key's fingerprint, printed in
the report, with the one the party announced out of band.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmed.errors import FedmedError

KEY_FILE = "audit-ed25519.pem"


class AuditError(FedmedError):
    """An audit key or log cannot be used (missing, unreadable, exposed or tampered)."""


def load_or_create_key(folder: Path) -> Ed25519PrivateKey:
    """The party's private key in ``folder`` (created, mode 0600, if absent)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / KEY_FILE
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_key(folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return key
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuditError(f"{path}: private key is readable by others (mode {mode:o}); chmod 600")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise AuditError(f"{path}: unreadable private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path}: not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The public key stored beside a log; AuditError if missing or not Ed25519."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise AuditError(f"{path}: public key missing beside the log") from None
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:  # e.g. a damaged key type OID
        raise AuditError(f"{path}: unreadable public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path}: not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:<hex>`` of the raw public key: what a party announces to its verifiers."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + hashlib.sha256(raw).hexdigest()


def signature_valid(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
