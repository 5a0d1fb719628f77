"""Back up a site home into one archive and restore it, checking the audit log both ways.

Why here, in ``fedmed.clients``: a backup is a copy of the hospital node's site home, so
it needs that home's layout and lock (:mod:`fedmed.clients.site_home`), and it checks the
home with :func:`fedmed.audit.verify_tree` (chain, signatures, signed head, ledger against
the signed releases) — both below or beside it in the layers. It must not import
``fedmed.server`` (a sibling): the coordinator's witness record is read by
:func:`witnessed_head_in`, a small parser of the same JSON ``server/witness.py`` writes.
``fedmed site backup`` / ``fedmed site restore`` (``fedmed.commands.site``) only parse
arguments and print.

The archive is a ``tar.gz`` with the home's files under ``home/`` and a manifest,
``fedmed-backup.json``: site, audit-log head (seq, hash), time, fedmed version and the
SHA-256 of every file. It holds the site's private audit key, so it is written 0600.

Errors: :class:`BackupInputError` (a ``FedmedError``: the CLI exits 2) for a missing or
unreadable file, a malformed or unsafe archive, a home that is in the way;
:class:`BackupIntegrityError` (exit 1) when a log or file fails its check, or the backup is
older than the head the coordinator witnessed.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fedmed
from fedmed.audit import verify_tree
from fedmed.audit.entries import holds_head
from fedmed.clients.site_home import AUDIT_FILE, LOCK_FILE, SiteHome
from fedmed.errors import FedmedError

MANIFEST = "fedmed-backup.json"
FORMAT = "fedmed-site-backup/1"
PREFIX = "home"


class BackupInputError(FedmedError):
    """A usage or input problem (missing file, bad archive, home in the way): exit 2."""


class BackupIntegrityError(FedmedError):
    """The audit log, a file or the witnessed head does not check out: exit 1."""


@dataclass(frozen=True)
class BackupInfo:
    """What an archive holds: the manifest's site, head and file count."""

    site: str
    seq: int
    hash: str
    files: int
    created: str


def _verified_head(home: Path) -> tuple[str, int, str, list[dict[str, Any]]]:
    """(site, seq, hash, entries) of the intact site log in ``home``; integrity error if not."""
    log = home / AUDIT_FILE
    if not log.is_file():
        raise BackupIntegrityError(f"{log}: site audit log missing")
    checks = verify_tree([home])
    for check in checks:
        if not check.ok:
            where = f"line {check.line}: " if check.line is not None else ""
            raise BackupIntegrityError(f"{check.path}: audit log broken ({where}{check.reason})")
    check = next(c for c in checks if c.path == log)
    if not check.party.startswith("site:"):
        raise BackupIntegrityError(f"{log}: not a site's audit log (party {check.party!r})")
    return check.party.removeprefix("site:"), check.last_seq, check.last_hash, check.entries


def backup(home: Path, out: Path) -> BackupInfo:
    """Write the archive of ``home`` to ``out`` atomically (0600) after verifying its log."""
    home, out = Path(home), Path(out)
    if not home.is_dir():
        raise BackupInputError(f"{home}: no site home there")
    if out.resolve().is_relative_to(home.resolve()):
        raise BackupInputError(f"{out}: the archive cannot be written inside the site home")
    if not out.parent.is_dir():
        raise BackupInputError(f"{out.parent}: folder does not exist")
    site, seq, digest, _ = _verified_head(home)
    with SiteHome(home, site).lock():  # no round writes while the copy is taken
        site, seq, digest, _ = _verified_head(home)
        fd, temporary = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                    hashes = _add_home(tar, home)
                    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    manifest = {
                        "format": FORMAT,
                        "site": site,
                        "head": {"seq": seq, "hash": digest},
                        "created": created,
                        "fedmed_version": fedmed.__version__,
                        "files": hashes,
                    }
                    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
                    info = tarfile.TarInfo(MANIFEST)
                    info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
                    tar.addfile(info, io.BytesIO(data))
                raw.flush()
                os.fsync(raw.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, out)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    return BackupInfo(site, seq, digest, len(hashes), created)


def _add_home(tar: tarfile.TarFile, home: Path) -> dict[str, str]:
    """Add every folder and file of ``home`` under ``home/``; their SHA-256 by relative path."""
    hashes: dict[str, str] = {}
    for path in sorted(home.rglob("*")):
        relative = path.relative_to(home).as_posix()
        if relative == LOCK_FILE:
            continue
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise BackupInputError(f"{path}: not a plain file or folder; not backed up")
        info = tarfile.TarInfo(f"{PREFIX}/{relative}")
        stat = path.stat()
        info.mode, info.mtime = stat.st_mode & 0o777, int(stat.st_mtime)
        if path.is_dir():
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            continue
        data = path.read_bytes()  # hashed and archived from the same bytes
        info.size = len(data)
        hashes[relative] = hashlib.sha256(data).hexdigest()
        tar.addfile(info, io.BytesIO(data))
    return hashes


def _read_manifest(archive: Path, tar: tarfile.TarFile) -> dict[str, Any]:
    """The manifest after checking every member is a safe plain file or folder."""
    for member in tar.getmembers():
        name = PurePosixPath(member.name)
        if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
            raise BackupInputError(f"{archive}: unsafe archive member {member.name!r}; refused")
        if str(name) != MANIFEST and name.parts[0] != PREFIX:
            raise BackupInputError(f"{archive}: unexpected archive member {member.name!r}")
    try:
        handle = tar.extractfile(MANIFEST)
        manifest = json.loads(handle.read()) if handle else None
        head = manifest["head"]
        if manifest.get("format") != FORMAT or not isinstance(manifest["files"], dict):
            raise ValueError(f"not a {FORMAT} manifest")
        if not isinstance(head["seq"], int) or not isinstance(head["hash"], str):
            raise ValueError("no head seq and hash")
        if not isinstance(manifest["site"], str):
            raise ValueError("no site name")
    except (KeyError, ValueError, TypeError) as exc:
        raise BackupInputError(f"{archive}: no readable {MANIFEST} ({exc})") from None
    return manifest


def read_info(archive: Path) -> BackupInfo:
    """The manifest's summary of ``archive`` (input error if it is not a site backup)."""
    with _open(archive) as tar:
        m = _read_manifest(archive, tar)
    head = m["head"]
    return BackupInfo(m["site"], head["seq"], head["hash"], len(m["files"]), str(m.get("created")))


def _open(archive: Path) -> tarfile.TarFile:
    if not archive.is_file():
        raise BackupInputError(f"{archive}: no such backup archive")
    try:
        return tarfile.open(archive, mode="r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise BackupInputError(f"{archive}: not a readable tar.gz archive ({exc})") from None


def witnessed_head_in(record: Path, site: str) -> tuple[int, str]:
    """(seq, hash) witnessed for ``site`` in the coordinator's witness record (JSON
    ``{"federation", "sites": {site: {"seq", "hash", ...}}}``, ``server/witness.py``)."""
    record = Path(record)
    if not record.is_file():
        raise BackupInputError(f"{record}: no such witness record")
    try:
        head = json.loads(record.read_text(encoding="utf-8"))["sites"][site]
        seq, digest = head["seq"], head["hash"]
        if not isinstance(seq, int) or not isinstance(digest, str):
            raise ValueError("no seq and hash")
    except KeyError:
        raise BackupInputError(f"{record}: no witnessed head for site {site!r}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise BackupInputError(f"{record}: unreadable witness record ({exc})") from None
    return seq, digest


def restore(
    archive: Path,
    home: Path,
    force: bool = False,
    witness: tuple[int, str] | None = None,
) -> tuple[BackupInfo, Path | None]:
    """Restore ``archive`` into ``home``; (what it held, where the replaced home was moved).

    Nothing is changed at ``home`` until the restored copy checks out: files against the
    manifest's hashes, the audit log (chain, signatures, head, ledger), the manifest's head,
    and ``witness`` (seq, hash) if given. A replaced home is moved aside, never deleted.
    """
    archive, home = Path(archive), Path(home)
    in_the_way = home.exists() and (not home.is_dir() or any(home.iterdir()))
    if in_the_way and not force:
        raise BackupInputError(f"{home}: exists and is not empty; restore with --force to "
                               "move it aside")
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = home.parent / f".{home.name}.restoring-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    try:
        with _open(archive) as tar:
            manifest = _read_manifest(archive, tar)
            try:
                tar.extractall(staging, filter="data")
            except (OSError, tarfile.TarError) as exc:
                raise BackupInputError(f"{archive}: cannot extract ({exc})") from None
        restored = staging / PREFIX
        _check_files(archive, restored, manifest["files"])
        site, seq, digest, entries = _verified_head(restored)
        head = manifest["head"]
        if (site, seq, digest) != (manifest["site"], head["seq"], head["hash"]):
            raise BackupIntegrityError(
                f"{archive}: restored log of site {site!r} ends at seq {seq} ({digest[:12]}…), "
                f"not at the manifest's head seq {head['seq']} of site {manifest['site']!r}"
            )
        if witness is not None:
            w_seq, w_hash = witness
            if not holds_head(entries, w_seq, w_hash):
                raise BackupIntegrityError(
                    f"{archive}: the backup is older than what the coordinator witnessed "
                    f"(seq {w_seq}, {w_hash[:12]}…; the backup ends at seq {seq}) or differs "
                    "from it; the site would refuse to train from this home"
                )
        if in_the_way:
            _refuse_hiding_releases(archive, home, entries)
        aside = None
        if home.exists() or home.is_symlink():
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = home.with_name(f"{home.name}.replaced-{stamp}")  # µs: two restores differ
            if in_the_way:
                os.rename(home, aside)
            else:
                home.rmdir()  # an empty folder: nothing to keep
                aside = None
        os.rename(restored, home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info = BackupInfo(site, seq, digest, len(manifest["files"]), str(manifest.get("created")))
    return info, aside


def _refuse_hiding_releases(archive: Path, home: Path, restored: list[dict[str, Any]]) -> None:
    """Refuse to replace a home whose intact log holds signed releases the backup lacks:
    they were really made (the coordinator may never have witnessed them), and restoring
    would hide privacy already spent. A home whose log is broken may be replaced."""
    try:
        _, _, _, current = _verified_head(home)
    except BackupIntegrityError:
        return
    kept = {entry["hash"] for entry in restored}
    lost = [e["seq"] for e in current if e["kind"] == "dp-release" and e["hash"] not in kept]
    if lost:
        raise BackupIntegrityError(
            f"{home}: its audit log holds {len(lost)} signed release(s) that {archive} lacks "
            f"(seq {', '.join(map(str, lost))}); restoring would hide privacy already spent — "
            "back up the current home instead, or keep it"
        )


def _check_files(archive: Path, restored: Path, expected: dict[str, str]) -> None:
    """Every restored file is in the manifest with its SHA-256, and every listed one is there."""
    if not restored.is_dir():
        raise BackupInputError(f"{archive}: holds no site home")
    found = {p.relative_to(restored).as_posix(): p for p in restored.rglob("*") if p.is_file()}
    for relative in sorted(set(found) | set(expected)):
        if relative not in expected:
            raise BackupIntegrityError(f"{archive}: {relative} is not in the manifest")
        if relative not in found:
            raise BackupIntegrityError(f"{archive}: {relative} is listed but missing")
        if hashlib.sha256(found[relative].read_bytes()).hexdigest() != expected[relative]:
            raise BackupIntegrityError(f"{archive}: {relative} differs from its manifest hash")
