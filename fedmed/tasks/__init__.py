"""Task packs found by name.

Modeled on Opacus's accountant registry: a name maps to a class, and adding a task
means adding one module in this package that decorates its class with
:func:`register_task` — no other file changes. Modules are discovered on first
lookup: the module named after the task first (``icd-minilm`` → ``icd_minilm``), every
module only when that one does not register it — so a Ray actor or a node's worker that
trains the heart pack never imports the text packs' de-identification stack (seconds of
CPU per process). A pack whose own dependencies are missing from this install (say
presidio for the text packs on a node set up for imaging only) does not take the other
packs down with it: asking for it names the module that failed to import.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from fedmed.data.admission import AdmissionStage
from fedmed.errors import ConfigError
from fedmed.tasks.base import SiteData, TaskPack

__all__ = ["SiteData", "TaskPack", "get_task", "register_task", "task_names"]

_REGISTRY: dict[str, type[TaskPack]] = {}
_UNAVAILABLE: dict[str, str] = {}  # pack module -> why it could not be imported
_discovered = False


def register_task(name: str) -> Callable[[type[TaskPack]], type[TaskPack]]:
    """Class decorator: make a TaskPack subclass available as ``name``."""

    def decorator(cls: type[TaskPack]) -> type[TaskPack]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"task name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _import_pack_module(module: str) -> None:
    """Import one module of this package; a missing third-party dependency is recorded."""
    try:
        importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as exc:
        if (exc.name or "fedmed").split(".")[0] == "fedmed":
            raise  # our own code is broken: never hide that
        _UNAVAILABLE[module] = f"needs {exc.name!r}, which is not installed"


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            _import_pack_module(module.name)
    _discovered = True


def _find(name: str) -> type[TaskPack] | None:
    """The class registered as ``name``: its own module first, then every module."""
    if name not in _REGISTRY:
        module = name.replace("-", "_")
        if any(found.name == module for found in pkgutil.iter_modules(__path__)):
            _import_pack_module(module)
    if name not in _REGISTRY:
        _discover()
    return _REGISTRY.get(name)


def task_names() -> list[str]:
    """Names of every registered task pack."""
    _discover()
    return sorted(_REGISTRY)


def get_task(name: str, admission: AdmissionStage | None = None) -> TaskPack:
    """A new instance of the pack registered as ``name``; ConfigError if unknown.

    ``admission``: the site's de-identification stage the pack reads raw data through (a
    node passes its site home's, so every admitted batch is signed into its audit log).
    ``name`` may carry the pack's own settings (``config.task``, a
    :class:`fedmed.config.TaskRef`): the pack is configured with them, ConfigError if it
    does not take one of them or refuses its value."""
    cls = _find(name)
    if cls is None:
        missing = _UNAVAILABLE.get(name.replace("-", "_"))
        if missing:
            raise ConfigError(f"task {name!r} cannot load here: it {missing}")
        raise ConfigError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}"
        )
    pack = cls()
    pack.configure(dict(getattr(name, "settings", {})))
    pack.admission = admission
    return pack
