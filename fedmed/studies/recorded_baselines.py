"""Where a generalization study's local-only and pooled rows come from.

Those baselines never use DP, so a study of DP federations compares its noisy
models with exactly the local and pooled models of the same study without DP.
Training them again costs about half a study (all four locals, the pooled model,
and a pooled model without each held-out site), so ``fedmed generalization
--baselines-from STUDY`` reads them from an earlier study of the same federation,
after checking that it trained them the same way: same task, sites, data folder,
epochs and optimiser settings (the :class:`BaselineRecipe` every study records),
for every seed asked for — and that one of its local models, trained again here,
still scores as recorded (:meth:`RecordedBaselines.spot_check`).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedmed.device import pick_device
from fedmed.errors import ConfigError, DataError
from fedmed.outputs import Scores
from fedmed.studies.baselines import run_baselines, train_model
from fedmed.tasks import TaskPack
from fedmed.training.loop import TrainSettings

POOLED = "pooled"
LOCAL_MEAN = "local-mean"
LOCAL_PREFIX = "local "


def mean_std(values: list[float | None]) -> tuple[float, float]:
    """Mean and population std of the defined values; (nan, nan) when none is defined.

    A metric can be undefined for a site (AUC on a test split with one class: ``None`` in
    the JSON), and is then left out rather than counted as 0 — the tables say ``n/a``.
    """
    defined = [v for v in values if v is not None and not math.isnan(v)]
    if not defined:
        return math.nan, math.nan
    return statistics.fmean(defined), statistics.pstdev(defined) if len(defined) > 1 else 0.0


@dataclass(frozen=True)
class BaselineRecipe:
    """Everything besides the seed that decides which baseline models a study trains."""

    task: str
    sites: tuple[str, ...]
    data_dir: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    steps_per_epoch: int = 0  # TrainSettings.batch_for

    def to_json(self) -> dict[str, Any]:
        recorded = {**asdict(self), "sites": list(self.sites)}
        if not self.steps_per_epoch:  # as studies recorded before the setting existed
            del recorded["steps_per_epoch"]
        return recorded

    def settings(self, seed: int) -> TrainSettings:
        return TrainSettings(
            local_epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            seed=seed,
            steps_per_epoch=self.steps_per_epoch,
        )


class BaselineSource(Protocol):
    """The local-only and pooled scores of one seed, on all sites or one held-out site."""

    def all_sites(self, seed: int) -> dict[str, Scores]:
        """``{"local <site>": scores, ..., "pooled": scores}``, each tested on every site."""
        ...

    def held_out(self, seed: int, held: str) -> dict[str, dict[str, float]]:
        """``{"pooled": metrics, "local-mean": metrics}`` on ``held``, trained without it."""
        ...


@dataclass(frozen=True)
class TrainedBaselines:
    """Baselines trained here and now (``fedmed.studies.baselines``).

    A held-out site's local-mean row needs no training: the other sites' local models are
    the ones :meth:`all_sites` trained (same recipe and seed, so the same models) and
    already tested on every site, the held-out one included. Only the pooled model of the
    other sites is new, which halves the baseline work of leave-one-site-out.
    """

    pack: TaskPack
    recipe: BaselineRecipe
    _all_sites: dict[int, dict[str, Scores]] = field(default_factory=dict, compare=False)

    def _run(self, seed: int, sites: list[str], tests: list[str] | None, local: bool) -> dict:
        data_dir = Path(self.recipe.data_dir) if self.recipe.data_dir else None
        settings = self.recipe.settings(seed)
        epochs = self.recipe.epochs
        return run_baselines(self.pack, sites, data_dir, epochs, settings, tests, local).scores

    def all_sites(self, seed: int) -> dict[str, Scores]:
        if seed not in self._all_sites:
            scores = self._run(seed, list(self.recipe.sites), None, local=True)
            self._all_sites[seed] = {
                f"{LOCAL_PREFIX}{s}": scores[s] for s in self.recipe.sites
            } | {POOLED: scores[POOLED]}
        return self._all_sites[seed]

    def held_out(self, seed: int, held: str) -> dict[str, dict[str, float]]:
        others = [s for s in self.recipe.sites if s != held]
        pooled = self._run(seed, others, [held], local=False)[POOLED][held]
        every_site = self.all_sites(seed)
        local = [every_site[f"{LOCAL_PREFIX}{s}"][held] for s in others]
        return {
            POOLED: pooled,
            LOCAL_MEAN: {m: mean_std([s[m] for s in local])[0] for m in local[0]},
        }


@dataclass(frozen=True)
class RecordedBaselines:
    """Baselines read from an earlier study's ``generalization.json``."""

    path: Path
    raw: dict[str, Any]
    sha256: str  # of the file as read, so the provenance names exactly what was borrowed

    def all_sites(self, seed: int) -> dict[str, Scores]:
        runs = self.raw["all_sites"][str(seed)]
        return {k: v for k, v in runs.items() if k.startswith(LOCAL_PREFIX) or k == POOLED}

    def held_out(self, seed: int, held: str) -> dict[str, dict[str, float]]:
        row = self.raw["leave_one_out"][str(seed)][held]
        return {POOLED: row[POOLED], LOCAL_MEAN: row[LOCAL_MEAN]}

    def spot_check(self, pack: TaskPack, recipe: BaselineRecipe, seed: int) -> None:
        """Retrain one recorded model here and refuse the study if it scores differently.

        The recipe says how the baselines were trained, not which code and data made
        them: a task whose data generator or model changed since would lend rows that no
        longer compare. One local model (the first site's) is a small price for knowing.
        """
        site = recipe.sites[0]
        data_dir = Path(recipe.data_dir) if recipe.data_dir else None
        data = pack.load_site(site, data_dir, seed)
        model = train_model(pack, [data.train], recipe.epochs, recipe.settings(seed))
        now = pack.evaluate(model, data.test, pick_device())
        then = self.all_sites(seed)[f"{LOCAL_PREFIX}{site}"][site]
        differ = [f"{m} {then.get(m)} there, {v} here" for m, v in now.items()
                  if not _close(then.get(m), v)]  # fmt: skip
        if differ:
            raise ConfigError(
                f"{self.path}: its local {site} model (seed {seed}) scores differently when "
                f"trained again here ({'; '.join(differ)}): the task's code or data changed "
                "since, so its rows would not compare; train the baselines again"
            )

    def provenance(self) -> dict[str, str]:
        """The study the rows were first trained in (a borrowed study points at its source)."""
        if "baselines_from" in self.raw:
            return dict(self.raw["baselines_from"])
        return {"study": str(self.path), "sha256": self.sha256}


def _close(recorded: float | None, now: float | None, tolerance: float = 1e-4) -> bool:
    """Equal up to float noise, both undefined (``None``/NaN) counting as equal."""
    if recorded is None or now is None or math.isnan(recorded) or math.isnan(now):
        return _undefined(recorded) and _undefined(now)
    return abs(recorded - now) <= tolerance


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)


def load_recorded(
    path: Path,
    recipe: BaselineRecipe,
    seeds: list[int],
    with_leave_one_out: bool,
    warn: Callable[[str], None],
) -> RecordedBaselines:
    """The study at ``path`` as a baseline source, or an error saying why it cannot be one.

    A study written before studies recorded their recipe can only be checked for its
    sites and seeds (and by :meth:`RecordedBaselines.spot_check`); ``warn`` is told so.
    """
    try:
        content = path.read_bytes()
        raw = json.loads(content.decode("utf-8"))
        runs, held = raw["all_sites"], raw["leave_one_out"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a fedmed generalization study ({exc})") from None
    _check_recipe(path, raw.get("baselines"), recipe, warn)
    missing = [s for s in seeds if str(s) not in runs]
    if missing:
        raise ConfigError(f"{path}: it has no baselines for seed(s) {missing}; "
                          f"it ran seed(s) {sorted(runs)}")  # fmt: skip
    for seed in seeds:
        local = [k for k in runs[str(seed)] if k.startswith(LOCAL_PREFIX)]
        trained = {k.removeprefix(LOCAL_PREFIX) for k in local}
        if trained != set(recipe.sites):
            raise ConfigError(f"{path}: seed {seed} has local models of {sorted(trained)}, "
                              f"this study's sites are {sorted(recipe.sites)}")  # fmt: skip
        if with_leave_one_out and set(held.get(str(seed), {})) != set(recipe.sites):
            raise ConfigError(
                f"{path}: it has no leave-one-site-out rows for seed {seed}; "
                "add --no-leave-one-out or borrow from a study that has them"
            )
    return RecordedBaselines(path=path, raw=raw, sha256=hashlib.sha256(content).hexdigest())


def _check_recipe(
    path: Path, recorded: dict | None, recipe: BaselineRecipe, warn: Callable[[str], None]
) -> None:
    if recorded is None:
        warn(f"{path} does not record how its baselines were trained (an older study): "
             "its sites and seeds are checked, and one of its models is trained again")  # fmt: skip
        return
    wanted = recipe.to_json()
    differ = [f"{k} {recorded.get(k)!r} there, {v!r} here" for k, v in wanted.items()
              if recorded.get(k) != v]  # fmt: skip
    if differ:
        raise ConfigError(f"{path}: its baselines were trained differently: " + "; ".join(differ))
