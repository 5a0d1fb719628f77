"""PNG plots of a run: each metric per round per site, and the final per-site bars."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # nodes and CI have no display
import matplotlib.pyplot as plt  # noqa: E402


def plot_run(metrics: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write ``<metric>_per_round.png`` for every metric and ``final_per_site.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rounds = [r for r in metrics.get("rounds", []) if r.get("per_site")]
    written: list[Path] = []
    names = sorted({m for r in rounds for scores in r["per_site"].values() for m in scores})
    sites = sorted({s for r in rounds for s in r["per_site"]})
    for metric in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        for site in sites:
            points = [
                (r["round"], r["per_site"][site][metric])
                for r in rounds
                if metric in r["per_site"].get(site, {})
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=site)
        ax.plot(
            [r["round"] for r in rounds],
            [r["mean"].get(metric) for r in rounds],
            color="black",
            linewidth=2,
            label="mean",
        )
        ax.set(xlabel="round", ylabel=metric, title=f"{metric} per round and site")
        ax.legend(fontsize=8)
        path = out_dir / f"{metric}_per_round.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    final = metrics.get("final", {}).get("per_site", {})
    if final:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
        for ax, metric in zip(axes[0], names, strict=True):
            labels = sorted(final)
            ax.bar(labels, [final[s].get(metric, 0.0) or 0.0 for s in labels], color="steelblue")
            ax.set(title=f"final {metric}", ylim=(0, 1))
            ax.tick_params(axis="x", rotation=30)
        path = out_dir / "final_per_site.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def plot_generalization(summary: Mapping[str, Any], path: Path, title: str) -> Path:
    """One figure per metric of a study: every regime on every site's test split (grouped
    bars with the seed std as error bars) and, when present, leave-one-site-out."""
    sites = [*summary["sites"], "mean"]
    regimes = list(summary["table"])
    held_out = summary["leave_one_out"]
    panels = 2 if held_out else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    _grouped_bars(axes[0][0], sites, {r: summary["table"][r] for r in regimes})
    axes[0][0].set(title="every regime on every site's test split", ylabel=summary["metric"])
    if held_out:
        loso_regimes = list(next(iter(held_out.values())))
        rows = {r: {h: held_out[h][r] for h in held_out} for r in loso_regimes}
        _grouped_bars(axes[0][1], list(held_out), rows)
        axes[0][1].set(title="leave-one-site-out: score on the unseen site")
    fig.suptitle(f"{title}: {summary['metric']}, mean ± std over {summary['seeds']} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _grouped_bars(
    ax: Any, groups: list[str], series: Mapping[str, Mapping[str, tuple[float, float]]]
) -> None:
    width = 0.8 / max(1, len(series))
    for index, (name, cells) in enumerate(series.items()):
        xs = [g + index * width for g in range(len(groups))]
        ax.bar(
            xs,
            [cells[g][0] for g in groups],
            width,
            yerr=[cells[g][1] for g in groups],
            label=name,
            capsize=2,
        )
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, rotation=20)
    ax.legend(fontsize=7, ncol=2)
