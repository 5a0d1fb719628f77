"""Task packs found by name.

Modeled on Opacus's accountant registry: a name maps to a class, and adding a task
means adding one module in this package that decorates its class with
:func:`register_task` — no other file changes. Modules are discovered on first
lookup. A pack whose own dependencies are missing from this install (say presidio
for the text packs on a node set up for imaging only) does not take the other packs
down with it: asking for it names the module that failed to import.
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


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        try:
            importlib.import_module(f"{__name__}.{module.name}")
        except ModuleNotFoundError as exc:
            if (exc.name or "fedmed").split(".")[0] == "fedmed":
                raise  # our own code is broken: never hide that
            _UNAVAILABLE[module.name] = f"needs {exc.name!r}, which is not installed"
    _discovered = True


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
    _discover()
    try:
        pack = _REGISTRY[name]()
    except KeyError:
        missing = _UNAVAILABLE.get(name.replace("-", "_"))
        if missing:
            raise ConfigError(f"task {name!r} cannot load here: it {missing}") from None
        raise ConfigError(
            f"unknown task {name!r}; known tasks: {', '.join(sorted(_REGISTRY))}"
        ) from None
    pack.configure(dict(getattr(name, "settings", {})))
    pack.admission = admission
    return pack
