"""Packaging (docs/architecture.md § Layout and layers): clients/ server/ deid/ import only
under fedmed."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


def test_generic_top_level_names_are_not_importable(tmp_path: Path) -> None:
    for name in ("server", "clients", "deid"):
        proc = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, name


def test_folders_install_under_fedmed(repo: Path) -> None:
    import fedmed.clients
    import fedmed.server

    assert Path(fedmed.server.__file__).parent == repo / "server"
    assert Path(fedmed.clients.__file__).parent == repo / "clients"


FEDERATIONS = sorted(
    p.parent.name for p in Path(__file__).resolve().parents[1].glob("examples/*/pyproject.toml")
)


@pytest.mark.parametrize("folder", FEDERATIONS)
def test_federation_folders_name_installed_components(repo: Path, folder: str) -> None:
    document = tomllib.loads((repo / "examples" / folder / "pyproject.toml").read_text())
    components = document["tool"]["flwr"]["app"]["components"]
    for reference in components.values():
        module, _, attribute = reference.partition(":")
        assert module.startswith("fedmed."), reference
        assert getattr(importlib.import_module(module), attribute) is not None


def test_a_pack_missing_a_dependency_leaves_the_others_and_names_what_is_missing(
    tmp_path: Path,
) -> None:
    """An imaging-only node without presidio still runs imaging; asking for icd says why not."""
    script = (
        "import sys; sys.modules['presidio_analyzer'] = None\n"
        "from fedmed.errors import ConfigError\n"
        "from fedmed.tasks import get_task, task_names\n"
        "names = task_names()\n"
        "assert 'imaging-cls' in names and 'icd' not in names, names\n"
        "get_task('imaging-cls')\n"
        "try:\n"
        "    get_task('icd')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "task 'icd' cannot load here" in proc.stdout
    assert "presidio_analyzer" in proc.stdout


def test_a_pack_is_found_without_importing_the_others(tmp_path: Path) -> None:
    """A simulated node training heart pays for heart's imports only, not for the text
    packs' de-identification stack (seconds of CPU in every Ray actor and node worker)."""
    script = (
        "import sys\n"
        "from fedmed.tasks import get_task\n"
        "get_task('heart'); get_task('heart-flamby')\n"  # the second lives in heart.py too
        "print(sorted(m for m in sys.modules if m.startswith(('fedmed.tasks.', 'presidio'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert "fedmed.tasks.heart" in proc.stdout
    assert "fedmed.tasks.icd" not in proc.stdout and "presidio" not in proc.stdout
