"""The run's report for people: ``<run dir>/report.md``, written by the coordinator.

``metrics.json`` is for tools; this page is what a clinician or data scientist opens after a
run: the final per-site scores, each site's ε, the plots already under ``plots/``, and per
site where its explanations of the final model are held. Markdown, because it reads as plain
text in a terminal and renders (images included) in any Markdown viewer; the privacy
compliance report (``report.html``, :mod:`fedmed.audit.report_html`) is a separate document
for the privacy officer.

Explanations are linked, never copied: they show patient data and stay in each site's home
(:mod:`fedmed.explain.outcome`). A site's folder that exists on this machine (simulation, or a
site deployed on the coordinator's host) is linked by a path relative to the run directory,
so the run and site-home folders can be moved together; otherwise the report names the site
and the path on that site's machine. An explainer's failure, or a site that did not answer
the final evaluation, is written in the table — a missing picture is always explained.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmed.outputs import format_epsilon

REPORT_FILE = "report.md"
COMPLIANCE_REPORT = "report.html"  # written by `fedmed run` / `fedmed audit report`
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg")
NOTEWORTHY_EVENTS = (
    "refusal", "rejected-update", "fit-failure", "evaluate-failure", "explanation-failure"
)


def write_markdown_report(
    run_dir: Path, document: Mapping[str, Any], status: str, explanation_kind: str
) -> Path:
    """Write ``report.md`` for the run in ``run_dir`` from its metrics ``document``.

    ``status`` is the coordinator's ("completed", "stopped: …"); ``explanation_kind`` is the
    task pack's (empty when the pack has no explainer).
    """
    run_dir = Path(run_dir)
    sections = [
        _header(document, status),
        _scores(document),
        _privacy(document),
        _plots(run_dir),
        _explanations(run_dir, document, explanation_kind),
        _events(document),
    ]
    path = run_dir / REPORT_FILE
    path.write_text("\n".join(line for section in sections for line in section), encoding="utf-8")
    return path


def _header(document: Mapping[str, Any], status: str) -> list[str]:
    rounds = [r["round"] for r in document.get("rounds", [])]
    planned = document.get("config", {}).get("num-server-rounds", "?")
    lines = [
        f"# Run report: {document.get('run-id', 'unknown run')}",
        "",
        f"Federation `{document.get('federation')}`, task `{document.get('task')}`, strategy "
        f"`{document.get('strategy')}`; {max(rounds, default=0)} of {planned} rounds; "
        f"status: **{status}**.",
        f"Written by the coordinator on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.",
        f"Data for tools: [metrics.json](metrics.json). Privacy compliance report: "
        f"[{COMPLIANCE_REPORT}]({COMPLIANCE_REPORT}) (written by `fedmed run`, or "
        "`fedmed audit report`).",
        "",
    ]
    if document.get("stopped"):
        stopped = document["stopped"]
        lines += [f"**Stopped in round {stopped.get('round')}:** {stopped.get('reason')}", ""]
    return lines


def _scores(document: Mapping[str, Any]) -> list[str]:
    final = document.get("final", {})
    per_site: Mapping[str, Mapping[str, Any]] = final.get("per_site", {})
    lines = ["## Final model, per site", ""]
    if not per_site:
        return [*lines, "No site evaluated a model in this run.", ""]
    primary = document.get("primary-metric", "")
    metrics = sorted({m for scores in per_site.values() for m in scores},
                     key=lambda m: (m != primary, m))
    lines += [
        "| site | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for site, scores in sorted(per_site.items()):
        lines.append(f"| {site} | " + " | ".join(_number(scores.get(m)) for m in metrics) + " |")
    mean = final.get("mean", {})
    lines.append("| **mean** | " + " | ".join(f"**{_number(mean.get(m))}**" for m in metrics)
                 + " |")
    return [*lines, "", f"Each site scores the model on its own test split; primary metric "
            f"`{primary}`; the mean is unweighted over sites.", ""]


def _privacy(document: Mapping[str, Any]) -> list[str]:
    privacy: Mapping[str, Mapping[str, Any]] = document.get("privacy", {})
    if not privacy:
        return []
    lines = ["## Privacy per site", "",
             "| site | ε spent (all runs on its site home) | δ | rounds joined | rounds refused |",
             "|---|---:|---:|---:|---:|"]
    for site, summary in sorted(privacy.items()):
        lines.append(
            f"| {site} | {format_epsilon(summary.get('epsilon'), missing='n/a')} | "
            f"{summary.get('delta', 'n/a')} | "
            f"{summary.get('rounds_joined', 0)} | {summary.get('rounds_refused', 0)} |"
        )
    return [*lines, ""]


def _plots(run_dir: Path) -> list[str]:
    plots = sorted((run_dir / "plots").glob("*.png"))
    if not plots:
        return ["## Plots", "", "No plot was written (no round was evaluated).", ""]
    lines = ["## Plots", ""]
    for plot in plots:
        lines += [f"![{plot.stem}]({_target(plot.relative_to(run_dir).as_posix())})", ""]
    return lines


def _explanations(
    run_dir: Path, document: Mapping[str, Any], explanation_kind: str
) -> list[str]:
    lines = ["## Explanations of the final model", ""]
    if not explanation_kind:
        return [*lines, f"The `{document.get('task')}` task has no explainer; none were made.",
                ""]
    if document.get("config", {}).get("explain") is False:
        return [*lines, "This run set `explain = false`: the sites made none.", ""]
    lines += [
        f"{explanation_kind[0].upper()}{explanation_kind[1:]}, made by each site on a few of its "
        "own test examples at the last evaluation. They show patient data, so each site wrote "
        "them into its own site home; they were never sent to the coordinator. The links work "
        "where the site's folder is on this machine (simulation); otherwise the path is on "
        "the site's machine.",
        "",
        "| site | files | where they are held |",
        "|---|---:|---|",
    ]
    held: Mapping[str, Mapping[str, Any]] = document.get("explanations", {})
    galleries: list[str] = []
    for site in sorted({*document.get("sites", []), *held}):
        entry = held.get(site)
        if entry is None:
            lines.append(f"| {site} | 0 | not reported: the site did not answer the last "
                         "evaluation (see Events) |")
            continue
        folder = Path(str(entry.get("folder", ""))) if entry.get("folder") else None
        where = _where(run_dir, site, folder)
        if entry.get("error"):
            where = f"**failed:** {_cell(str(entry['error']))}" + (f"; {where}" if folder else "")
        lines.append(f"| {site} | {entry.get('count', 0)} | {where} |")
        if folder is not None and folder.is_dir():
            galleries += _gallery(run_dir, site, folder)
    return [*lines, "", *galleries]


def _where(run_dir: Path, site: str, folder: Path | None) -> str:
    if folder is None:
        return "no folder reported"
    if folder.is_dir():
        return f"[{_cell(_relative(folder, run_dir))}]({_target(_relative(folder, run_dir))})"
    return f"at site {site}, `{_cell(str(folder))}` on that site's machine"


def _gallery(run_dir: Path, site: str, folder: Path) -> list[str]:
    """The files of one site's folder: images shown, other files linked."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    lines = [f"### {site}", ""]
    for path in files:
        target = _target(_relative(path, run_dir))
        if path.suffix.lower() in IMAGE_SUFFIXES:
            lines.append(f"![{path.name}]({target})")
        else:
            lines.append(f"- [{path.name}]({target})")
    return [*lines, ""]


def _events(document: Mapping[str, Any]) -> list[str]:
    rows = [
        (entry["round"], event)
        for entry in document.get("rounds", [])
        for event in entry.get("events", [])
        if event.get("kind") in NOTEWORTHY_EVENTS
    ]
    if not rows:
        return ["## Events", "", "No refusal, rejected update or failure was recorded.", ""]
    lines = ["## Events", "", "| round | kind | site | detail |", "|---:|---|---|---|"]
    for server_round, event in rows:
        detail = event.get("reason") or event.get("detail") or ""
        lines.append(f"| {server_round} | {event.get('kind')} | {event.get('site', '')} | "
                     f"{_cell(str(detail))} |")
    return [*lines, ""]


def _relative(path: Path, run_dir: Path) -> str:
    """``path`` relative to the run directory (absolute if on another drive or unresolvable)."""
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())).as_posix()
    except ValueError:
        return Path(path).resolve().as_posix()


def _target(link: str) -> str:
    """A Markdown link destination; angle brackets keep spaces and parentheses intact."""
    return f"<{link}>" if any(c in link for c in " ()<>") else link


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (one line, no column breaks)."""
    return " ".join(text.split()).replace("|", "\\|")


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "unbounded"
    return f"{value:.3f}" if isinstance(value, int | float) else str(value)
