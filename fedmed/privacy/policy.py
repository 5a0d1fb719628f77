"""A site's privacy policy: ``policy.toml`` in its site home.

The hospital, not the coordinator, decides how much privacy its patients may lose.
The policy binds every job that trains on the site's data:

- ``epsilon`` / ``delta``: the site's lifetime (ε, δ) budget. ε is accounted at this δ
  over every release ever recorded in the ledger, across rounds, runs and models.
  ``epsilon = inf`` means "no cap" and is the only setting under which a job without
  DP noise (whose ε is unbounded) may train.
- ``min_noise_multiplier``: the least DP-SGD noise σ a job may use, whatever ε it
  claims (a floor against jobs tuned to spend the budget in a few noisy-free rounds).
- ``allowed_tasks``: task packs that may train here (``"*"`` allows all).
- ``accountant``: the accountant whose ε the budget is measured in (rdp, prv, gdp).
- ``[deid]`` (optional table): the site's de-identification settings. Kept here as the
  table the site wrote, so its bytes are in the policy digest the node signs as a
  ``policy-change`` and its content in :meth:`Policy.to_json`; the node validates it with
  ``fedmed.deid.config.DeidConfig`` wherever it admits data (``fedmed.privacy`` sits beside
  ``fedmed.deid`` in the layers and does not import it).

No maximum clipping norm: the clip bound C scales both the per-example sensitivity
and the noise (σ·C), so ε does not depend on it; it is recorded, not limited.

Fail closed: a missing, unreadable or malformed policy raises
:class:`~fedmed.errors.PrivacyRefusal`, never falls back to defaults.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedmed.errors import ConfigError, PrivacyRefusal
from fedmed.privacy.accounting import ACCOUNTANTS

POLICY_FILE = "policy.toml"
DEID_TABLE = "deid"
DEFAULT_EPSILON = 10.0
DEFAULT_DELTA = 1e-5
DEFAULT_MIN_NOISE_MULTIPLIER = 0.5


@dataclass(frozen=True)
class Policy:
    """The rules a site applies before every round (see the module docstring)."""

    epsilon: float = DEFAULT_EPSILON
    delta: float = DEFAULT_DELTA
    min_noise_multiplier: float = DEFAULT_MIN_NOISE_MULTIPLIER
    allowed_tasks: tuple[str, ...] = field(default=("*",))
    accountant: str = "rdp"
    deid: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and not math.isnan(self.epsilon)):
            raise ConfigError(f"policy epsilon must be > 0 (or inf), got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"policy delta must be in (0, 1), got {self.delta}")
        if not (self.min_noise_multiplier >= 0 and math.isfinite(self.min_noise_multiplier)):
            raise ConfigError(
                f"policy min_noise_multiplier must be >= 0, got {self.min_noise_multiplier}"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"policy accountant {self.accountant!r} unknown; expected one of "
                + ", ".join(ACCOUNTANTS)
            )
        if not self.allowed_tasks or not all(isinstance(t, str) for t in self.allowed_tasks):
            raise ConfigError("policy allowed_tasks must be a non-empty list of task names")

    def allows_task(self, task: str) -> bool:
        return "*" in self.allowed_tasks or task in self.allowed_tasks

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["allowed_tasks"] = list(self.allowed_tasks)
        if math.isinf(self.epsilon):
            document["epsilon"] = None  # JSON has no infinity: null means "no cap"
        if not self.deid:
            del document["deid"]  # a policy without [deid] reads as before it existed
        return document

    def to_toml(self) -> str:
        """The policy as a commented ``policy.toml`` (values written by tomli-w)."""
        return (
            "# fedmed site privacy policy: read by this site's node before every round.\n"
            "# Lifetime budget, accounted over every DP release in ledger.json at this delta.\n"
            "# epsilon = inf removes the cap (and is required for jobs without DP noise).\n"
            + _toml_line("epsilon", float(self.epsilon))
            + _toml_line("delta", self.delta)
            + "# Least DP-SGD noise multiplier (sigma) a job may use.\n"
            + _toml_line("min_noise_multiplier", self.min_noise_multiplier)
            + '# Task packs allowed to train on this site\'s data ("*" = all).\n'
            + _toml_line("allowed_tasks", list(self.allowed_tasks))
            + "# Accountant the budget is measured with: rdp (default), prv or gdp.\n"
            + _toml_line("accountant", self.accountant)
            + self._deid_toml()
        )

    def _deid_toml(self) -> str:
        """The ``[deid]`` table (docs/deid.md lists its keys), or nothing when unset."""
        if not self.deid:
            return ""
        return ("# De-identification of the site's data before training (docs/deid.md).\n"
                + tomli_w.dumps({"deid": self.deid}))


def _toml_line(key: str, value: Any) -> str:
    """``key = value`` as tomli-w writes it (strings escaped), a list kept on one line."""
    if isinstance(value, list):
        items = ", ".join(_toml_line("v", item).removeprefix("v = ").rstrip("\n") for item in value)
        return f"{key} = [{items}]\n"
    return tomli_w.dumps({key: value})


def parse_policy(text: str, source: str = POLICY_FILE) -> Policy:
    """A :class:`Policy` from TOML text; PrivacyRefusal naming ``source`` on any problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PrivacyRefusal(f"{source}: unreadable policy ({exc})") from None
    known = {"epsilon", "delta", "min_noise_multiplier", "allowed_tasks", "accountant"}
    unknown = sorted(set(document) - known - {DEID_TABLE})
    if unknown:
        names = ", ".join(k if k.isprintable() else repr(k) for k in unknown)  # one line
        raise PrivacyRefusal(f"{source}: unknown policy setting(s) {names}")
    deid = document.get(DEID_TABLE, {})
    if not isinstance(deid, dict):
        raise PrivacyRefusal(f"{source}: [{DEID_TABLE}] must be a table, got {deid!r}")
    missing = sorted(known - set(document))
    if missing:
        raise PrivacyRefusal(f"{source}: policy lacks {', '.join(missing)}")
    try:
        return Policy(
            epsilon=_number(document["epsilon"], "epsilon"),
            delta=_number(document["delta"], "delta"),
            min_noise_multiplier=_number(document["min_noise_multiplier"], "min_noise_multiplier"),
            allowed_tasks=tuple(_task_list(document["allowed_tasks"])),
            accountant=str(document["accountant"]),
            deid=deid,
        )
    except ConfigError as exc:
        raise PrivacyRefusal(f"{source}: {exc}") from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # a TOML integer past float range (tomllib reads any size)
        raise ConfigError(f"{name} must be a number within float range, got {value}") from None


def _task_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"allowed_tasks must be a list of strings, got {value!r}")
    return value


def load_policy(path: Path) -> Policy:
    """Read ``policy.toml``; PrivacyRefusal if it is missing or malformed (fail closed)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PrivacyRefusal(f"{path}: policy file missing; refusing to train") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PrivacyRefusal(f"{path}: policy unreadable ({exc})") from None
    return parse_policy(text, str(path))
