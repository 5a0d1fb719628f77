"""``lint-imports`` for fedmed: the import contracts in ``pyproject.toml``, checked.

Stock ``lint-imports`` would see only ``fedmed/``: grimp walks the folder of the root
package, but ``fedmed.clients``, ``fedmed.server`` and ``fedmed.deid`` live in the
top-level folders ``clients/``, ``server/`` and ``deid/`` (``[tool.setuptools.package-dir]``).
This wrapper adds those folders to the graph under their installed names, then runs
import-linter's own command line, so its options (``--contract``, ``--verbose``, ...) and
report are unchanged. ``make test`` runs it before pytest; ``tests/test_layers.py`` runs it
too, so a plain ``pytest`` checks the contracts as well.

Run from the repository root: ``.venv/bin/python tests/lint_imports.py``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import grimp
from grimp.application import usecases
from grimp.application.config import settings as grimp_settings

ROOT = Path(__file__).resolve().parent.parent


def mapped_folders(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Path]:
    """Sub-packages whose folder is not under their parent's: ``{"fedmed.deid": .../deid}``."""
    setuptools = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    return {
        name: (pyproject.parent / folder).resolve()
        for name, folder in package_dir.items()
        if "." in name and Path(folder) != Path(*name.split("."))
    }


def _install_mapped_folders() -> None:
    """Make ``grimp.build_graph("fedmed")`` also scan the mapped folders."""
    if getattr(usecases._find_packages, "fedmed_mapped", False):
        return
    find_packages = usecases._find_packages
    extra = mapped_folders()

    def find_with_mapped_folders(file_system, package_names):
        found = find_packages(file_system, package_names)
        roots = set(package_names)
        for name, folder in extra.items():
            if name.split(".")[0] in roots:
                found.add(
                    grimp_settings.MODULE_FINDER.find_package(
                        package_name=name, package_directory=str(folder), file_system=file_system
                    )
                )
        return found

    find_with_mapped_folders.fedmed_mapped = True  # type: ignore[attr-defined]
    usecases._find_packages = find_with_mapped_folders


def build_graph() -> grimp.ImportGraph:
    """fedmed's whole import graph (imports inside functions included)."""
    _install_mapped_folders()
    return grimp.build_graph("fedmed", cache_dir=None)


def main(argv: list[str] | None = None) -> int:
    _install_mapped_folders()
    from importlinter import cli  # configures import-linter on import

    args = ["--no-cache", str(ROOT / "pyproject.toml"), *(argv or [])]
    try:
        cli.lint_imports_command.main(args=args, prog_name="lint-imports", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
