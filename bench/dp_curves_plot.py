"""Draw the curves of ``bench/dp_accuracy.py --json`` files: score against ε, one line per
examples-per-site size, one panel per file (docs/privacy.md § DP recipes and curves).

Usage::

    python bench/dp_curves_plot.py OUT.png RUN.json[+MORE.json ...] [RUN.json ...]

``a.json+b.json`` draws the runs of both files in one panel (the same pack benched in
several commands, e.g. one size at a time).

Why a separate script: the benches take minutes to hours per pack and run apart; the figure
is redrawn from what they wrote, never from numbers typed in. ε = ∞ (DP off) is drawn at the
right edge as a dashed line per size, so the gap DP costs reads off directly.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402


def curves(runs: list[dict[str, Any]], metric: str) -> dict[str, dict[float, float]]:
    """size label → ε → the score's mean over sites and seeds."""
    scores: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        label = "built-in" if run["size"] is None else f"{run['size']} per site"
        mean = statistics.mean(site[metric] for site in run["per_site"].values())
        scores[label][float(run["epsilon"])].append(mean)
    return {label: {eps: statistics.mean(v) for eps, v in by_eps.items()}
            for label, by_eps in scores.items()}  # fmt: skip


def panel(spec: str) -> dict[str, Any]:
    """One panel's results: the files of ``a.json+b.json``, runs joined, first file's title."""
    results = [json.loads(Path(name).read_text()) for name in spec.split("+")]
    if len({r["metric"] for r in results}) > 1:
        raise SystemExit(f"{spec}: the files score different metrics")
    return {**results[0], "runs": [run for r in results for run in r["runs"]]}


def draw(out: Path, panels: list[str]) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, spec in zip(axes[0], panels, strict=True):
        result = panel(spec)
        metric = result["metric"]
        for label, by_eps in curves(result["runs"], metric).items():
            finite = sorted(e for e in by_eps if math.isfinite(e))
            line = axis.plot(finite, [by_eps[e] for e in finite], marker="o", label=label)
            if math.inf in by_eps:
                axis.axhline(by_eps[math.inf], color=line[0].get_color(), linestyle="--")
        axis.set_xscale("log")
        axis.set_xticks(sorted({e for r in result["runs"] if math.isfinite(e := r["epsilon"])}))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set(xlabel="ε per site (δ = 1e-5); dashed: no DP", ylabel=metric,
                 title=result["title"].split(",")[0])
        axis.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("Usage::")[1].split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    draw(Path(argv[0]), argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
