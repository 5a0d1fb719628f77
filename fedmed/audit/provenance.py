"""What code and which settings produced an audited event.

``code_version()`` is the fedmed version plus a SHA-256 over every installed fedmed
source file (the ``fedmed`` package and its ``clients``, ``server`` and ``deid``
parts), so an auditor can tell whether two sites ran the same training code, and a
release can be tied to exact code rather than to a version string that edits do not
change. ``config_hash()`` is the SHA-256 of a run's settings in canonical JSON.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import fedmed
from fedmed.audit.entries import canonical
from fedmed.outputs import json_safe

SOURCE_PACKAGES = ("fedmed", "fedmed.clients", "fedmed.server", "fedmed.deid")


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """``{"fedmed": version, "source_sha256": hex}`` of the installed sources (cached)."""
    digest = hashlib.sha256()
    roots: list[tuple[str, Path]] = []
    for name in SOURCE_PACKAGES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "__file__", None):
            roots.append((name, Path(module.__file__).resolve().parent))
    seen: set[Path] = set()
    for name, root in roots:
        for path in sorted(root.rglob("*.py")):
            if path in seen or "__pycache__" in path.parts:
                continue
            seen.add(path)
            digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return {"fedmed": fedmed.__version__, "source_sha256": digest.hexdigest()}


def config_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of ``settings`` as canonical JSON."""
    return hashlib.sha256(canonical(json_safe(dict(settings))).encode("ascii")).hexdigest()
