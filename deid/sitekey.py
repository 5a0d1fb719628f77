"""The site's de-identification secret and what is derived from it.

Why a secret: surrogates must be consistent for one patient across notes and DICOM
(the same patient keeps the same fake name and the same date offset, so intervals and
linkage survive), yet nobody outside the site may be able to recompute them. Everything
is derived with HMAC-SHA256 from a 32-byte secret kept in
``<site_home>/deid/site_secret.key`` (created 0600 on first use, refused when readable by
others). The secret never leaves the site: reports carry only its fingerprint, a hash
that identifies which key was used without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from fedmed.errors import ConfigError

SECRET_RELPATH = Path("deid") / "site_secret.key"


class SiteKey:
    """HMAC derivations from the site secret (offsets, seeds, UIDs)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("site de-id secret must be at least 16 bytes")
        self._secret = secret

    def __repr__(self) -> str:  # never print the secret
        return f"SiteKey(fingerprint={self.fingerprint})"

    @classmethod
    def load_or_create(cls, site_home: str | Path) -> SiteKey:
        """The site's key, created (32 random bytes, mode 0600) if it does not exist."""
        path = Path(site_home) / SECRET_RELPATH
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls._read(path)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        return cls._read(path)

    @classmethod
    def create_derived(cls, site_home: str | Path, label: str) -> SiteKey:
        """A new key derived from the public ``label`` (SHA-256 of it), for a simulated home
        whose numbers must come out the same in every run — a study's or a bench's
        throwaway federation, where the node draws its DP noise from this key. Anyone who
        knows the label can recompute the key, so it is never for a real site
        (:meth:`load_or_create`). Refuses a home that already holds a key."""
        path = Path(site_home) / SECRET_RELPATH
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise ConfigError(f"{path}: the home already holds a site secret") from e
        with os.fdopen(fd, "w") as f:
            f.write(hashlib.sha256(label.encode("utf-8")).hexdigest() + "\n")
        return cls._read(path)

    @classmethod
    def _read(cls, path: Path) -> SiteKey:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: site de-id secret is accessible to other users "
                              f"(mode {stat.filemode(mode)}); run chmod 600 on it")
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except ValueError as e:
            raise ConfigError(f"{path}: site de-id secret is not hex text") from e

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(b"fedmed-deid-fingerprint|" + self._secret).hexdigest()[:16]

    def digest(self, *parts: str) -> bytes:
        msg = "\x1f".join(parts).encode("utf-8")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def number(self, *parts: str) -> int:
        """A 64-bit integer derived from ``parts`` (seeds, indices)."""
        return int.from_bytes(self.digest(*parts)[:8], "big")

    def date_offset(self, patient_id: str, max_days: int = 1095) -> int:
        """The patient's date shift in days: non-zero, within ``[-max_days, max_days]``."""
        n = self.number("date-offset", patient_id) % (2 * max_days)
        return n - max_days if n < max_days else n - max_days + 1

    def uid(self, original: str) -> str:
        """A DICOM UID ``2.25.<int>`` (UUID-derived form, PS3.5 B.2) for ``original``."""
        return "2.25." + str(int.from_bytes(self.digest("dicom-uid", original)[:16], "big"))
