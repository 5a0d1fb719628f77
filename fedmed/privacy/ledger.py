"""The per-site privacy ledger: ``ledger.json`` in the site home.

Every DP release the site makes (one federated round of DP-SGD on its data) is one
entry: which run and round, which task, the mechanism's parameters (noise
multiplier σ, Poisson sample rate q, number of noisy steps, clipping norm), the δ and
accountant ε was measured with, the ε of the whole history after the release, and
the fingerprint of the data trained on. The list of ``(σ, q, steps)`` is the
accountant's history: it is the only source of ε (see :mod:`fedmed.privacy.accounting`),
so the ledger survives restarts and composes across runs of the same site.

Durability: the whole file is rewritten through :func:`fedmed.outputs.write_bytes_durable`
(temporary file, fsync, rename, fsync of the folder) before the node lets the update
leave. Fail closed: a missing or malformed ledger raises
:class:`~fedmed.errors.PrivacyRefusal` — an unreadable record of spent privacy is
never read as "nothing spent".

The ledger is a cache, not the record: every release is also signed into the site's
audit log as a ``dp-release`` entry whose payload carries the same fields. The node
compares the two at every round (:func:`ledger_disagreement`, fed with the payloads
the caller read from the verified log) and refuses on any difference, so a ledger
edited or reset by hand can never make ε lower than the signed log proves;
:func:`signed_history` gives the accountant's history from the signed payloads alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fedmed.errors import PrivacyRefusal
from fedmed.outputs import write_bytes_durable
from fedmed.privacy.accounting import epsilon_of

LEDGER_FILE = "ledger.json"
LEDGER_FORMAT = "fedmed-ledger/1"


@dataclass(frozen=True)
class LedgerEntry:
    """One DP release. ``epsilon_after`` is ε of the history up to and including it."""

    run: str
    round: int
    task: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    epsilon_after: float
    clip_norm: float
    dataset: str
    time: str

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        if not math.isfinite(self.epsilon_after):
            document["epsilon_after"] = None  # unbounded (a release without noise)
        return document

    @classmethod
    def from_json(cls, document: Any, where: str) -> LedgerEntry:
        if not isinstance(document, dict):
            raise PrivacyRefusal(f"{where}: a release is not a JSON object")
        names = {f.name: f.type for f in fields(cls)}
        if set(document) != set(names):
            raise PrivacyRefusal(
                f"{where}: release fields {sorted(document)} differ from {sorted(names)}"
            )
        values: dict[str, Any] = {}
        for name, kind in names.items():
            value = document[name]
            if name == "epsilon_after" and value is None:
                values[name] = math.inf
            elif kind == "int" and type(value) is int and abs(value) < 2**63:
                values[name] = value
            elif kind == "float" and _finite_number(value):
                values[name] = float(value)
            elif kind == "str" and isinstance(value, str):
                values[name] = value
            else:
                raise PrivacyRefusal(f"{where}: release field {name!r} has a bad value {value!r}")
        if values["steps"] < 1 or not 0.0 < values["sample_rate"] <= 1.0:
            raise PrivacyRefusal(f"{where}: release with impossible steps or sample rate")
        if values["noise_multiplier"] < 0 or not 0.0 < values["delta"] < 1.0:
            raise PrivacyRefusal(f"{where}: release with impossible noise multiplier or delta")
        if values["round"] < 0 or values["epsilon_after"] < 0:
            raise PrivacyRefusal(f"{where}: release with a negative round or epsilon")
        # A release without DP (σ = 0, ε unbounded) clipped nothing and is recorded with a
        # clipping norm of 0; a release with noise must have clipped to a positive norm.
        no_dp = values["noise_multiplier"] == 0
        if values["clip_norm"] < 0 or (values["clip_norm"] == 0 and not no_dp):
            raise PrivacyRefusal(f"{where}: release with noise but a clipping norm that is "
                                 "not > 0")  # fmt: skip
        return cls(**values)


def _finite_number(value: Any) -> bool:
    """A JSON number that is a finite float (json reads NaN, Infinity and 400-digit ints)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


class Ledger:
    """The releases of one site, in order; append-only through :meth:`append`."""

    def __init__(self, path: Path, site: str, releases: list[LedgerEntry]) -> None:
        self.path = Path(path)
        self.site = site
        self.releases = releases

    @classmethod
    def create(cls, path: Path, site: str) -> Ledger:
        """A new, empty ledger written to ``path`` (which must not exist)."""
        if Path(path).exists():
            raise PrivacyRefusal(f"{path}: a ledger already exists; it is never overwritten")
        ledger = cls(path, site, [])
        ledger._write()
        return ledger

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Read ``ledger.json``; PrivacyRefusal if missing or malformed (fail closed)."""
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PrivacyRefusal(f"{path}: privacy ledger missing; refusing to train") from None
        # RecursionError: arrays or objects nested deeper than ~1000 levels
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise PrivacyRefusal(f"{path}: privacy ledger unreadable ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != LEDGER_FORMAT:
            raise PrivacyRefusal(f"{path}: not a {LEDGER_FORMAT} ledger")
        site, releases = document.get("site"), document.get("releases")
        if not isinstance(site, str) or not isinstance(releases, list):
            raise PrivacyRefusal(f"{path}: ledger lacks its site name or release list")
        entries = [
            LedgerEntry.from_json(item, f"{path} release {index + 1}")
            for index, item in enumerate(releases)
        ]
        return cls(path, site, entries)

    def history(self) -> list[tuple[float, float, int]]:
        """The accountant history ``[(σ, q, steps), ...]`` of every release."""
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.releases]

    def spent(self, delta: float, accountant: str) -> float:
        """ε of every release so far, at ``delta`` (recomputed from the history)."""
        return epsilon_of(self.history(), delta, accountant)

    def append(self, entry: LedgerEntry) -> None:
        """Record ``entry`` durably; when this returns, the release is on disk."""
        self.releases.append(entry)
        try:
            self._write()
        except OSError as exc:
            self.releases.pop()
            raise PrivacyRefusal(f"{self.path}: cannot record the release ({exc})") from None

    def _write(self) -> None:
        document = {
            "format": LEDGER_FORMAT,
            "site": self.site,
            "releases": [entry.to_json() for entry in self.releases],
        }
        write_bytes_durable(self.path, (json.dumps(document, indent=1) + "\n").encode())


RELEASE_FIELDS = tuple(f.name for f in fields(LedgerEntry))


def _signed_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ledger fields of one signed ``dp-release`` payload (absent ones are ``None``)."""
    return {name: payload.get(name) for name in RELEASE_FIELDS}


def _label(release: Mapping[str, Any]) -> str:
    return f"run {release.get('run')!r} round {release.get('round')!r}"


def ledger_disagreement(
    releases: Sequence[LedgerEntry], signed: Sequence[Mapping[str, Any]]
) -> tuple[int, str] | None:
    """``None`` when ``releases`` (the ledger) are exactly the signed ``dp-release``
    payloads ``signed`` (in log order); otherwise ``(index, why)``: the 0-based index of
    the first release that differs, and the difference in one line.

    Pure: the caller reads ``signed`` from a verified audit log (the log is the source
    of truth, the ledger its cache). Differences: a release signed but missing from the
    ledger, a release whose fields differ, a ledger release with no signed entry.
    """
    recorded = [entry.to_json() for entry in releases]
    pairs = zip(recorded, map(_signed_fields, signed), strict=False)  # lengths: below
    for index, (mine, theirs) in enumerate(pairs):
        changed = [name for name in RELEASE_FIELDS if mine[name] != theirs[name]]
        if changed:
            values = "; ".join(
                f"{name} ledger {mine[name]!r} vs signed {theirs[name]!r}" for name in changed
            )
            return index, (
                f"release {index + 1} ({_label(theirs)}) differs from its signed entry: {values}"
            )
    count = len(recorded)
    if len(signed) > count:
        return count, (
            f"release {count + 1} ({_label(_signed_fields(signed[count]))}) is signed in the "
            f"audit log but missing from the ledger ({count} of {len(signed)} signed releases "
            "recorded)"
        )
    if count > len(signed):
        return len(signed), (
            f"ledger release {len(signed) + 1} ({_label(recorded[len(signed)])}) has no signed "
            "dp-release entry in the audit log"
        )
    return None


def signed_history(signed: Sequence[Mapping[str, Any]]) -> list[tuple[float, float, int]]:
    """The accountant history ``[(σ, q, steps), ...]`` of signed ``dp-release`` payloads;
    PrivacyRefusal if one lacks a usable mechanism (fail closed: never read as no release)."""
    history: list[tuple[float, float, int]] = []
    for index, payload in enumerate(signed):
        sigma, rate, steps = (payload.get(k) for k in ("noise_multiplier", "sample_rate", "steps"))
        if not (_finite_number(sigma) and _finite_number(rate) and type(steps) is int):
            raise PrivacyRefusal(
                f"signed release {index + 1} ({_label(payload)}) lacks a usable mechanism"
            )
        history.append((float(sigma), float(rate), steps))
    return history


def signed_epsilon(signed: Sequence[Mapping[str, Any]], delta: float, accountant: str) -> float:
    """ε of every signed release, at ``delta`` (what the signed log proves was spent)."""
    return epsilon_of(signed_history(signed), delta, accountant)
