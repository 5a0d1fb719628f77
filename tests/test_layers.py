"""The architecture holds: import contracts kept, no import cycle, even inside functions.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``, drawn in
docs/architecture.md § Layout and layers); ``make test`` also runs them first, with
import-linter's full report.
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
from lint_imports import build_graph, main


@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_graph_sees_the_mapped_folders_and_imports_inside_functions(graph) -> None:
    # clients/, server/ and deid/ install as fedmed.clients, .server, .deid: a graph
    # without them would keep every contract about them trivially.
    for module in ("fedmed.clients.app", "fedmed.server.app", "fedmed.deid.gate"):
        assert module in graph.modules
    # `fedmed run` imports the simulation inside a function (Flower loads slowly).
    assert graph.direct_import_exists(importer="fedmed.commands.run", imported="fedmed.simulation")


def test_no_module_imports_another_that_imports_it_back(graph) -> None:
    cycles = []
    for importer in sorted(m for m in graph.modules if m.startswith("fedmed")):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back and imported != importer:
                cycles.append(" -> ".join((importer, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_import_contracts_are_kept() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["--no-logo"])
    assert code == 0, out.getvalue()
