"""A federation's settings: one typed object built from Flower's run config.

A federation folder (``examples/<name>/pyproject.toml``) holds its settings under
``[tool.flwr.app.config]``; Flower hands them to the ServerApp and ClientApp as
``context.run_config`` (keys with dashes). ``fedmed run`` may override any of them
from the command line. Both the coordinator and the node parse the same mapping
with :meth:`FederationConfig.from_run_config`, so they can never disagree on a
default.

The aggregation strategies a federation may name are registered here too
(:func:`register_strategy`, in the style of Opacus's accountant registry): the CLI's
``--strategy`` choices, :meth:`FederationConfig.validate` and the coordinator's
``fedmed.server.strategies.build_strategy`` all read the one registry. It lives at
this low layer, not in ``fedmed.server``, because every process validates its
config (the CLI before anything starts, the coordinator, each node) and only the
coordinator imports the server package; the builders import Flower lazily, so a
node's ClientApp does not pay for Flower's strategies.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmed.dp_recipes import CHOICES as DP_RECIPES
from fedmed.dp_recipes import MEASURED, recipe_overrides
from fedmed.errors import ConfigError

RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a fixed run id (FederationConfig.run_id)

if TYPE_CHECKING:
    from flwr.server.strategy import Strategy

# A value of a run config, a fit/evaluate config or a node's reply metrics (what Flower's
# legacy NumPyClient and run config carry); the one definition fedmed uses.
Scalar = bool | int | float | str
ConfigValue = Scalar


@dataclass(frozen=True)
class FederationConfig:
    """Everything one federated run needs.

    An absent ``local_epochs``, ``batch_size`` or ``lr`` (``None``) means "the task pack's
    default"; a value given is checked like any other, so 0 is an error, never a default.
    """

    federation: str = "heart"
    task: str = "heart"
    sites: str = ""
    num_server_rounds: int = 20
    strategy: str = "fedavg"
    local_epochs: int | None = None
    batch_size: int | None = None
    # At most this many steps an epoch: a site with more examples than batch-size × this
    # trains in larger batches (fedmed.training.loop.TrainSettings.batch_for); None: no cap.
    steps_per_epoch: int | None = None
    lr: float | None = None
    momentum: float = 0.0
    proximal_mu: float = 0.01
    # Keep normalisation layers at each site (FedBN-style; fedmed.training.local_norms).
    local_norm: bool = False
    server_lr: float = 0.1  # FedAdam's and FedYogi's server step η
    # FedAvgM's server momentum (its server learning rate is FedAvg's 1).
    server_momentum: float = 0.9
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    # Evaluate at the sites every N rounds and always after the last; 0: after the last only.
    # In deployment each evaluation is one more ClientApp process per site.
    evaluate_every: int = 1
    # Each site explains the final model into its own home at the last evaluation; false:
    # no explanations (a study's throwaway federations, a run that only trains).
    explain: bool = True
    min_nodes: int = 2
    # Seconds a plain round's train or evaluate exchange waits for replies; 0 = until every
    # node replied or Flower declared it unavailable (a node that is up but never replies
    # then holds the run; docs/operator-guide.md § 5).
    round_timeout: float = 0.0
    seed: int = 0
    data_dir: str = ""
    run_dir: str = ""
    # The run's id, which the nodes draw their DP noise from (with their secret) and key
    # their ledgers and kept releases by. Empty: "<run folder>-<8 random hex digits>", a new
    # one for every run. A fixed id is for a study's throwaway federations, whose site homes
    # are created for that one run (fedmed.studies.generalization), so a rerun reproduces
    # its DP numbers; sent again to the same homes, it is the same run to them.
    run_id: str = ""
    sites_home: str = ""
    coordinator_home: str = ""
    # Sample-level DP at every site (DP-SGD); see fedmed.privacy.job for the meaning.
    dp: bool = True
    epsilon: float = 1.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0
    clip_norm: float = 1.0
    accountant: str = "rdp"
    grad_sample_mode: str = "auto"
    # Every node's memory limit under DP: at most this many examples per forward/backward
    # pass, a logical batch split into parts (fedmed.privacy.trainer; the mechanism is the
    # same). 0: no limit. A deployed node's own `--max-physical-batch` wins.
    max_physical_batch: int = 0
    # With dp on: the pack's measured DP-SGD settings fill those the run config leaves out
    # (fedmed.dp_recipes); "none" keeps the pack's plain defaults.
    dp_recipe: str = MEASURED
    # Client-level DP at the coordinator (Flower's server-side fixed clipping).
    client_dp: bool = False
    client_noise_multiplier: float = 1.0
    client_clip_norm: float = 1.0
    # Secure aggregation (SecAgg+, fedmed.server.secagg): off in simulation, on by default
    # in deployment (fedmed.commands.deploy). Counts > 1, fractions <= 1 (Flower's rule).
    secagg: bool = False
    secagg_num_shares: float = 1.0
    secagg_threshold: float = 0.67
    secagg_clipping_range: float = 8.0
    secagg_max_weight: float = 1000.0
    secagg_timeout: float = 0.0
    # Bad-update screening before aggregation (fedmed.server.validation); 0 = no norm bound.
    max_update_norm: float = 0.0
    # Deployed runs: name each node by the site its key was registered for (the coordinator
    # home's identities.json, fedmed.server.identities), never by the node's own reply.
    registered_sites: bool = False
    # Settings of the task pack itself (None: the pack's default; the imaging packs take them
    # all, the ECG packs ``augment``: docs/imaging.md, docs/task-packs.md § Augmentation).
    # They travel inside ``task`` (a :class:`TaskRef`), so every
    # process that builds the pack from ``config.task`` builds the same model on the same data.
    backbone: str | None = None
    image_size: int | None = None
    fine_tune: str | None = None
    backbone_norm: str | None = None
    augment: str | None = None
    train_size: int | None = None  # built-in simulated sites only (fedmed.tasks.site_size)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", TaskRef(str(self.task), self.pack_settings()))

    def pack_settings(self) -> dict[str, Scalar]:
        """The task pack's own settings this config gives (dash-separated names)."""
        values = {_name(name): getattr(self, name) for name in PACK_SETTINGS}
        return {name: value for name, value in values.items() if value is not None}

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        """Parse Flower's run config (dash-separated keys); ConfigError on unknown keys or types."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, value in run_config.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                raise ConfigError(
                    f"unknown federation setting {raw_key!r}; known: "
                    + ", ".join(sorted(k.replace("_", "-") for k in known))
                )
            values[key] = _coerce(raw_key, value, _OPTIONAL.get(key) or type(getattr(cls(), key)))
        config = cls(**values)
        config.validate()
        given = {_name(key): value for key, value in run_config.items()}  # either spelling
        recipe = recipe_overrides(str(config.task), config.dp, config.dp_recipe, given)
        if recipe:
            config = replace(config, **{key.replace("-", "_"): value
                                        for key, value in recipe.items()})  # fmt: skip
            config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid value: every number finite and in its
        range, before anything starts (the CLI, the coordinator and each node call this)."""
        get_strategy(self.strategy)  # ConfigError naming the registered ones
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{_name(field.name)} must be a finite number, got {value}")
        self._validate_training()
        if self.num_server_rounds < 1:
            raise ConfigError(f"num-server-rounds must be >= 1, got {self.num_server_rounds}")
        for name in ("fraction_train", "fraction_evaluate"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be in (0, 1], got {value}")
        if self.round_timeout < 0:
            raise ConfigError(f"round-timeout must be >= 0, got {self.round_timeout}")
        if self.evaluate_every < 0:
            raise ConfigError(f"evaluate-every must be >= 0, got {self.evaluate_every}")
        if self.min_nodes < 1:
            raise ConfigError(f"min-nodes must be >= 1, got {self.min_nodes}")
        if self.dp_recipe not in DP_RECIPES:
            raise ConfigError(f"dp-recipe must be one of {', '.join(DP_RECIPES)}, "
                              f"got {self.dp_recipe!r}")  # fmt: skip
        if self.dp and not (self.epsilon > 0 or self.noise_multiplier > 0):
            raise ConfigError(f"epsilon must be > 0 when dp is on, got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        for name in ("clip_norm", "client_clip_norm"):
            if getattr(self, name) <= 0:
                value = getattr(self, name)
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if self.noise_multiplier < 0:
            raise ConfigError(f"noise-multiplier must be >= 0, got {self.noise_multiplier}")
        if self.client_dp and self.client_noise_multiplier <= 0:
            raise ConfigError(
                f"client-noise-multiplier must be > 0 with client-dp, got "
                f"{self.client_noise_multiplier}"
            )
        if self.max_update_norm < 0:
            raise ConfigError(f"max-update-norm must be >= 0, got {self.max_update_norm}")
        if self.secagg:
            self._validate_secagg()

    def _validate_training(self) -> None:
        """Local training settings: what a site would train with, never a silent default."""
        for name in ("local_epochs", "batch_size", "steps_per_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(
                    f"{_name(name)} must be >= 1, got {value} (leave it out for the task "
                    "pack's default)"
                )
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr} (leave it out for the task "
                              "pack's default)")  # fmt: skip
        if self.run_id and not RUN_ID.fullmatch(self.run_id):
            raise ConfigError(
                f"run-id {self.run_id!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(leave it out for a new random id)"
            )
        if self.max_physical_batch < 0:
            raise ConfigError(
                f"max-physical-batch must be >= 0 (0: no limit), got {self.max_physical_batch}"
            )
        if self.max_physical_batch and self.grad_sample_mode == "ghost":
            raise ConfigError("max-physical-batch does not work with grad-sample-mode ghost")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        for name in ("proximal_mu", "client_noise_multiplier"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_name(name)} must be >= 0, got {getattr(self, name)}")
        if self.server_lr <= 0:
            raise ConfigError(f"server-lr must be > 0, got {self.server_lr}")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ConfigError(f"server-momentum must be in [0, 1), got {self.server_momentum}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    def _validate_secagg(self) -> None:
        """Refuse what SecAgg+ cannot honour: it reveals only the sum of the updates."""
        if self.client_dp:
            raise ConfigError(
                "client-dp clips each site's update at the coordinator, which SecAgg+ never "
                "shows it; turn off secagg or client-dp (sample-level dp works with secagg)"
            )
        if get_strategy(self.strategy).sees_each_update:
            *others, last = (name for name in strategy_names()
                             if not get_strategy(name).sees_each_update)  # fmt: skip
            raise ConfigError(
                f"{self.strategy} needs each site's update, which SecAgg+ hides from the "
                f"coordinator; choose {', '.join(others)} or {last}, or set secagg = false"
            )
        shares, threshold = self.secagg_num_shares, self.secagg_threshold
        if not (0 < shares <= 1 or (shares >= 3 and shares == int(shares))):
            raise ConfigError(
                "secagg-num-shares must be a fraction in (0, 1] or a whole count >= 3, "
                f"got {shares}"
            )
        if not (0 < threshold <= 1 or (threshold >= 2 and threshold == int(threshold))):
            raise ConfigError(
                f"secagg-threshold must be a fraction in (0, 1] or a whole count >= 2, "
                f"got {threshold}"
            )
        if shares > 1 and threshold > 1 and threshold >= shares:
            raise ConfigError(
                f"secagg-threshold ({threshold:g}) must be below secagg-num-shares ({shares:g})"
            )
        for name in ("secagg_clipping_range", "secagg_max_weight"):
            if getattr(self, name) <= 0:
                value = getattr(self, name)
                raise ConfigError(f"{name.replace('_', '-')} must be > 0, got {value}")
        if self.secagg_timeout < 0:
            raise ConfigError(f"secagg-timeout must be >= 0, got {self.secagg_timeout}")
        if self.min_nodes < 2:
            raise ConfigError("secagg needs min-nodes >= 2: a sum of one update is that update")

    def site_list(self, default_sites: list[str]) -> list[str]:
        """The federation's sites in node order (``sites`` setting, else the pack's)."""
        sites = [s.strip() for s in self.sites.split(",") if s.strip()] or list(default_sites)
        if len(set(sites)) != len(sites):
            raise ConfigError(f"sites listed twice in {self.sites!r}")
        return sites

    def to_run_config(self) -> dict[str, ConfigValue]:
        """Back to Flower's dash-separated run config (an absent setting stays absent)."""
        return {
            key.replace("_", "-"): str(value) if isinstance(value, TaskRef) else value
            for key, value in asdict(self).items()
            if value is not None
        }


class TaskRef(str):
    """A task pack's name carrying the pack settings of the config that named it.

    Why a ``str``: the coordinator, the nodes, the CLI and the studies all build the pack
    with ``get_task(config.task)``; the name alone would give every one of them the pack's
    defaults. Carried inside the name, the settings reach every one of those places
    unchanged, and the name still reads, prints, serialises and compares as the plain name
    (``config.task == "imaging-cls"``, a policy's allowed tasks, the ledger). Two refs of one
    pack with different settings are *not* equal (or a per-process cache keyed by the task
    would hand one run the other's data); each still equals the plain name.
    """

    settings: Mapping[str, Scalar]

    def __new__(cls, name: str, settings: Mapping[str, Scalar] | None = None) -> TaskRef:
        ref = super().__new__(cls, name)
        ref.settings = dict(settings or {})
        return ref

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TaskRef) and self.settings != other.settings:
            return False
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__

    def __reduce__(self) -> tuple[Any, ...]:
        return (TaskRef, (str(self), dict(self.settings)))

    def __repr__(self) -> str:
        if not self.settings:
            return str.__repr__(self)
        return f"TaskRef({str(self)!r}, {self.settings})"


# Settings whose default is "absent" (None: the task pack's default), with their type.
_OPTIONAL: dict[str, type] = {
    "local_epochs": int, "batch_size": int, "steps_per_epoch": int, "lr": float,
    "backbone": str, "image_size": int, "fine_tune": str, "backbone_norm": str, "augment": str,
    "train_size": int,
}  # fmt: skip
# The task pack's own settings (fedmed.tasks.base.TaskPack.configure reads them).
PACK_SETTINGS = (
    "backbone", "image_size", "fine_tune", "backbone_norm", "augment", "train_size",
)


def _name(field_name: str) -> str:
    """A field's name as the federation folder and ``--set`` spell it."""
    return field_name.replace("_", "-")


def _coerce(key: str, value: Any, expected: type) -> Any:
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif expected is str and isinstance(value, str):
        return value
    elif isinstance(value, str):
        try:
            return expected(value)
        except ValueError:
            pass
    raise ConfigError(f"setting {key!r}: expected {expected.__name__}, got {value!r}")


def load_federation(folder: Path) -> dict[str, ConfigValue]:
    """Read ``[tool.flwr.app.config]`` of a federation folder (a Flower app folder)."""
    pyproject = Path(folder) / "pyproject.toml"
    if not Path(folder).is_dir():
        raise ConfigError(f"{folder}: federation folder not found")
    if not pyproject.is_file():
        raise ConfigError(f"{pyproject}: not found (a federation folder is a Flower app folder)")
    try:
        document = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{pyproject}: invalid TOML ({exc})") from None
    try:
        config = dict(document["tool"]["flwr"]["app"]["config"])
    except KeyError:
        raise ConfigError(f"{pyproject}: no [tool.flwr.app.config] section") from None
    config.setdefault("federation", Path(folder).resolve().name)
    return config


# Aggregation strategies ---------------------------------------------------------------

# Builds the Flower strategy of a config from ``common``: the keyword arguments every
# Flower strategy takes (fractions, minimum nodes, config functions, initial parameters),
# filled in by fedmed.server.strategies.build_strategy.
StrategyBuilder = Callable[[FederationConfig, dict[str, Any]], "Strategy"]


@dataclass(frozen=True)
class StrategySpec:
    """One registered aggregation strategy.

    ``sees_each_update``: the strategy needs each site's update (a trimmed mean, a
    median), which SecAgg+ hides from the coordinator, so a secagg run refuses it.
    """

    name: str
    build: StrategyBuilder
    sees_each_update: bool = False


_STRATEGIES: dict[str, StrategySpec] = {}


def register_strategy(
    name: str, *, sees_each_update: bool = False
) -> Callable[[StrategyBuilder], StrategyBuilder]:
    """Register the decorated builder under ``name`` (the ``strategy`` setting's value).

    A builder takes the federation's config and the common Flower keyword arguments and
    returns a Flower legacy strategy (the kind SecAgg+ plugs into). Registering a name
    twice is a programming error (ValueError), so a plug-in cannot silently replace one.
    """

    def decorator(build: StrategyBuilder) -> StrategyBuilder:
        if name in _STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        _STRATEGIES[name] = StrategySpec(name, build, sees_each_update)
        return build

    return decorator


def strategy_names() -> tuple[str, ...]:
    """The registered strategy names, in registration order (the CLI's choices)."""
    return tuple(_STRATEGIES)


def get_strategy(name: str) -> StrategySpec:
    """The strategy registered as ``name``; ConfigError naming the known ones otherwise."""
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; expected one of {', '.join(_STRATEGIES)}"
        ) from None


# Flower's own implementations (FedAvg, McMahan 2017; FedProx, Li 2020; FedAdam/FedYogi,
# Reddi 2021; FedAvgM, Hsu 2019; FedTrimmedAvg, Yin 2018; FedMedian). Flower is imported
# when a strategy is built, which only the coordinator does.


@register_strategy("fedavg")
def _fedavg(config: FederationConfig, common: dict[str, Any]) -> Strategy:
    from flwr.server.strategy import FedAvg

    return FedAvg(**common)


@register_strategy("fedprox")
def _fedprox(config: FederationConfig, common: dict[str, Any]) -> Strategy:
    from flwr.server.strategy import FedProx

    return FedProx(**common, proximal_mu=config.proximal_mu)


@register_strategy("fedadam")
def _fedadam(config: FederationConfig, common: dict[str, Any]) -> Strategy:
    from flwr.server.strategy import FedAdam

    return FedAdam(**common, eta=config.server_lr, eta_l=0.1 if config.lr is None else config.lr)


@register_strategy("fedyogi")
def _fedyogi(config: FederationConfig, common: dict[str, Any]) -> Strategy:
    from flwr.server.strategy import FedYogi

    return FedYogi(**common, eta=config.server_lr, eta_l=0.1 if config.lr is None else config.lr)


@register_strategy("fedavgm")
def _fedavgm(config: FederationConfig, common: dict[str, Any]) -> Strategy:
    from flwr.server.strategy import FedAvgM

    return FedAvgM(**common, server_learning_rate=1.0, server_momentum=config.server_momentum)


@register_strategy("fedtrimmedavg", sees_each_update=True)
def _fedtrimmedavg(config: FederationConfig, common: dict[str, Any]) -> Strategy:
    from flwr.server.strategy import FedTrimmedAvg

    return FedTrimmedAvg(**common, beta=0.2)


@register_strategy("fedmedian", sees_each_update=True)
def _fedmedian(config: FederationConfig, common: dict[str, Any]) -> Strategy:
    from flwr.server.strategy import FedMedian

    return FedMedian(**common)
