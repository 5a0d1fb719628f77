"""Live progress on the coordinator's console: one line per round with every site's score."""

from __future__ import annotations

import json
from collections.abc import Mapping
from logging import INFO
from typing import Any

from flwr.common.logger import log
from rich.console import Console
from rich.table import Table

from fedmed.outputs import json_safe

# soft_wrap: a deployed ServerApp has no terminal (80 columns); its round lines are read
# through `flwr log`, so they must not be broken mid-line.
console = Console(stderr=True, highlight=False, soft_wrap=True)
# Prefix of the one machine-readable line a run ends with (read by `fedmed run --coordinator`).
RESULT_MARKER = "FEDMED-RESULT "


def round_line(
    server_round: int,
    num_rounds: int,
    metric: str,
    per_site: Mapping[str, Mapping[str, float]],
    mean: Mapping[str, float],
) -> None:
    """Print ``round r/N  site metric ...  mean metric``."""
    scores = "  ".join(
        f"{site} [bold]{scores.get(metric, float('nan')):.3f}[/bold]"
        for site, scores in sorted(per_site.items())
    )
    console.print(
        f"[cyan]round {server_round}/{num_rounds}[/cyan]  {metric}: {scores}  "
        f"[green]mean {mean.get(metric, float('nan')):.3f}[/green]"
    )


def note(message: str) -> None:
    """A warning the operator should see (refusals, failures, rejected updates)."""
    console.print(f"[yellow]{message}[/yellow]")


def result_line(summary: Mapping[str, Any]) -> None:
    """Log the run's final results as one JSON line through Flower's logger.

    A deployed ServerApp's log is what ``flwr log`` streams to the submitter, who may
    be on another machine than the run directory; this line carries the per-site
    table there. In embedded simulation Flower's console shows errors only and its log goes
    to the run's ``simulation.log`` (fedmed.simulation), so the line lands there, never on
    a local run's console.
    """
    log(INFO, "%s%s", RESULT_MARKER, json.dumps(json_safe(dict(summary)), separators=(",", ":")))


def results_table(
    title: str, per_site: Mapping[str, Mapping[str, float]], mean: Mapping[str, float]
) -> Table:
    """Per-site results with the mean as the last row.

    A score read back from metrics.json may be ``None``: JSON has no NaN, and a site whose
    test split holds one class has no AUC (many small sites, ``rhdnase``); it prints "nan".
    """
    metrics = sorted({m for scores in per_site.values() for m in scores})
    table = Table(title=title)
    table.add_column("site")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for site, scores in sorted(per_site.items()):
        table.add_row(site, *(_score(scores.get(m)) for m in metrics))
    table.add_row("[bold]mean[/bold]", *(f"[bold]{_score(mean.get(m))}[/bold]" for m in metrics))
    return table


def _score(value: float | None) -> str:
    """A table cell: three decimals; an absent or null (NaN in JSON) score is "nan"."""
    return "nan" if value is None else f"{value:.3f}"
