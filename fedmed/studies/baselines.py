"""Local-only and pooled baselines on exactly the splits the federation uses.

FLamby's protocol: a model trained on one site's training split only ("local"),
and one trained on the union of all training splits ("pooled", the upper bound a
federation tries to reach without moving data), each evaluated on every site's
test split. Both get the same total number of local epochs as the federation
(rounds × local epochs) and the same optimiser settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from fedmed.device import pick_device
from fedmed.outputs import Scores, mean_over_sites
from fedmed.tasks import SiteData, TaskPack
from fedmed.training.loop import TrainSettings, train_round


@dataclass(frozen=True)
class BaselineResult:
    """``scores[trained_on][tested_on][metric]``; ``trained_on`` is a site or ``pooled``."""

    scores: dict[str, Scores]

    def mean(self, trained_on: str) -> dict[str, float]:
        return mean_over_sites(self.scores[trained_on])

    def to_json(self) -> dict[str, object]:
        return {
            name: {"per_site": per_site, "mean": mean_over_sites(per_site)}
            for name, per_site in self.scores.items()
        }


def evaluate_everywhere(
    pack: TaskPack, model: torch.nn.Module, sites: Mapping[str, SiteData], device: torch.device
) -> Scores:
    """The model's metrics on every site's test split."""
    return {name: pack.evaluate(model, data.test, device) for name, data in sites.items()}


def train_model(
    pack: TaskPack, datasets: list[torch.utils.data.Dataset], epochs: int, settings: TrainSettings
) -> torch.nn.Module:
    """A fresh model trained centrally on the concatenation of ``datasets``."""
    torch.manual_seed(settings.seed)
    model = pack.build_model()
    train_round(
        pack,
        model,
        ConcatDataset(datasets),
        replace(settings, local_epochs=epochs),
        pick_device(),
    )
    return model


def run_baselines(
    pack: TaskPack,
    site_names: list[str],
    data_dir: Path | None,
    epochs: int,
    settings: TrainSettings,
    test_site_names: list[str] | None = None,
    local: bool = True,
) -> BaselineResult:
    """Local-only per site (unless ``local`` is False) and pooled, trained on ``site_names``.

    Each model is tested on every site of ``test_site_names`` (default: the training
    sites; leave-one-site-out passes the held-out site instead, and needs only the pooled
    model: its sites' local models are the ones already tested on every site).
    """
    sites = {name: pack.load_site(name, data_dir, settings.seed) for name in site_names}
    tests = {
        name: sites.get(name) or pack.load_site(name, data_dir, settings.seed)
        for name in (test_site_names or site_names)
    }
    device = pick_device()
    scores: dict[str, Scores] = {}
    for name, data in sites.items() if local else ():
        model = train_model(pack, [data.train], epochs, settings)
        scores[name] = evaluate_everywhere(pack, model, tests, device)
    pooled = train_model(pack, [d.train for d in sites.values()], epochs, settings)
    scores["pooled"] = evaluate_everywhere(pack, pooled, tests, device)
    return BaselineResult(scores=scores)
