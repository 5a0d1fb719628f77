"""A site home: the folder where a hospital keeps what must outlive every run.

Layout::

    policy.toml                 the site's privacy policy (fedmed.privacy.policy)
    ledger.json                 every DP release ever made (fedmed.privacy.ledger): a
                                cache of the signed dp-release entries, checked against
                                them at every round
    audit.jsonl                 the site's signed audit log, with .pub and .head beside
                                (deid-batch entries: every batch the de-id gate admitted)
    deid/                       the gate's site secret and batch reports (fedmed.deid)
    quarantine/                 items the gate held back, each with a .reason.json (0600)
    admitted/<task>/            the gate's cache of released notes (text packs)
    keys/audit-ed25519.pem      the site's signing key (0600; never leaves the site)
    .lock                       serialises check → train → record across processes
    personal/                   normalisation layers kept at the site (local-norm runs)
    runs/<run>/explanations/    Grad-CAM, saliency, evidence of a run's final model

A home that does not exist yet is created whole (in a temporary folder, then
renamed) with the default policy — ε budget 10 at δ = 1e-5, σ ≥ 0.5, only the task
of the job that created it, RDP accounting — an empty ledger and a new key. A home
that exists is never repaired or reset: a missing or unreadable policy or ledger
makes the node refuse (``PrivacyRefusal``), because recreating either would
silently forget privacy already spent. A home deleted whole is caught by the
coordinator instead: it sends the head of the site's log it last witnessed, and a
round whose home is missing creates it only to sign the refusal
(``fedmed.clients.private_round``, step 0).

Where homes live: ``site-home`` in a deployed node's config; in simulation
``<sites-home>/<site>`` when the run sets ``sites-home``, else
``<state>/sites/<federation>/<site>`` (state folder: ``fedmed.state.state_root()``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedmed.audit import AuditError, AuditLog
from fedmed.audit.keys import KEY_FILE
from fedmed.config import FederationConfig
from fedmed.data.admission import AdmissionStage
from fedmed.deid.config import DeidConfig
from fedmed.errors import PrivacyRefusal
from fedmed.privacy.ledger import LEDGER_FILE, Ledger
from fedmed.privacy.policy import POLICY_FILE, Policy, load_policy, parse_policy
from fedmed.state import site_home_path

AUDIT_FILE = "audit.jsonl"
DEID_BATCH = "deid-batch"
KEYS_DIR = "keys"
LOCK_FILE = ".lock"


def default_site_home(config: FederationConfig, site: str) -> Path:
    """Where a simulated site keeps its home (see the module docstring)."""
    if config.sites_home:
        return Path(config.sites_home) / site
    return site_home_path(config.federation, site)


class SiteHome:
    """One site's home folder; every accessor fails closed."""

    def __init__(self, root: Path, site: str) -> None:
        self.root = Path(root)
        self.site = site

    @classmethod
    def open(cls, root: Path, site: str, task: str | None = None) -> SiteHome:
        """The home at ``root``, created with the default policy if the folder is absent."""
        root = Path(root)
        if not root.exists():
            cls._build(root, site, Policy(allowed_tasks=(task,) if task else ("*",)))
        elif not root.is_dir():
            raise PrivacyRefusal(f"{root}: site home is not a folder")
        return cls(root, site)

    @classmethod
    def create(
        cls,
        root: Path,
        site: str,
        policy: Policy,
        signing_key: Path | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> SiteHome:
        """A new home with ``policy``; refuses to touch a folder that already exists.

        ``signing_key``: an audit key issued elsewhere (a deployment kit) instead of a new
        one; ``details`` go into the home's first audit entry.
        """
        root = Path(root)
        if root.exists():
            raise PrivacyRefusal(f"{root}: already exists; a site home is never recreated")
        cls._build(root, site, policy, signing_key, details)
        return cls(root, site)

    @classmethod
    def _build(
        cls,
        root: Path,
        site: str,
        policy: Policy,
        signing_key: Path | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.parent / f".{root.name}.creating-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            if signing_key is not None:
                (staging / KEYS_DIR).mkdir(mode=0o700)
                shutil.copyfile(signing_key, staging / KEYS_DIR / KEY_FILE)
                (staging / KEYS_DIR / KEY_FILE).chmod(0o600)
            (staging / POLICY_FILE).write_text(policy.to_toml(), encoding="utf-8")
            Ledger.create(staging / LEDGER_FILE, site)
            log = AuditLog.open(staging / AUDIT_FILE, staging / KEYS_DIR, f"site:{site}")
            created = {"site": site, "policy": policy.to_json(), **(details or {})}
            log.append("site-home-created", created)
            os.rename(staging, root)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            if not root.is_dir():  # another process did not create it first: a real error
                raise

    @classmethod
    def with_audit_log(cls, root: Path) -> SiteHome | None:
        """The home at ``root`` if it holds a site audit log (a home made by ``fedmed site
        init`` or a node), its site read from its ledger; None otherwise. For signers that
        run outside a node (``fedmed deid scrub --site-home``); nothing is created."""
        root = Path(root)
        if not (root / AUDIT_FILE).is_file():
            return None
        return cls(root, Ledger.load(root / LEDGER_FILE).site)

    def policy(self) -> Policy:
        return load_policy(self.root / POLICY_FILE)

    def policy_and_digest(self) -> tuple[Policy, str]:
        """The policy and the SHA-256 of the very bytes it was parsed from (what the node
        signs as a ``policy-change`` when it differs from the last one it signed)."""
        path = self.root / POLICY_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PrivacyRefusal(f"{path}: policy file missing; refusing to train") from None
        except OSError as exc:
            raise PrivacyRefusal(f"{path}: policy unreadable ({exc})") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PrivacyRefusal(f"{path}: policy unreadable ({exc})") from None
        return parse_policy(text, str(path)), hashlib.sha256(data).hexdigest()

    def ledger(self) -> Ledger:
        ledger = Ledger.load(self.root / LEDGER_FILE)
        if ledger.site != self.site:
            raise PrivacyRefusal(
                f"{ledger.path}: ledger belongs to site {ledger.site!r}, not {self.site!r}"
            )
        return ledger

    def audit(self) -> AuditLog:
        """The site's audit log, verified before use; AuditError if missing or tampered with.

        Other writers (e.g. the de-identification gate's ``deid-batch`` entries) append
        through this, inside :meth:`lock`, so entries from two processes never interleave.
        """
        path = self.root / AUDIT_FILE
        if not path.is_file():
            raise AuditError(f"{path}: site audit log missing; refusing to continue")
        return AuditLog.open(path, self.root / KEYS_DIR, f"site:{self.site}")

    def deid_config(self) -> DeidConfig:
        """The site's de-identification settings: the ``[deid]`` table of its policy,
        validated (ConfigError naming the file and the key); the defaults without one.
        A missing or malformed policy refuses, as it does for a round (fail closed)."""
        return DeidConfig.from_dict(self.policy().deid, str(self.root / POLICY_FILE))

    def admission(self) -> AdmissionStage:
        """This site's de-id admission stage: gate state in this home, the policy's ``[deid]``
        settings, and every batch report signed into this home's audit log."""
        return AdmissionStage(self.site, self.root, self.deid_config(), self.sign_deid_batch)

    def sign_deid_batch(self, report: Mapping[str, Any]) -> bool:
        """Sign a gate batch report as a ``deid-batch`` entry, under the lock; False when the
        log already holds that batch id (the same admission seen again by another process)."""
        with self.lock():
            log = self.audit()
            if any(entry.get("batch") == report["batch"] for entry in log.of_kind(DEID_BATCH)):
                return False
            log.append(DEID_BATCH, report)
            return True

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of this home: two runs on one site cannot both spend the same budget."""
        with open(self.root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
