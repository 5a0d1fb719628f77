"""One hospital site: its data, its local training and its evaluation.

This is the part of the node that knows nothing of Flower's messages: the
ClientApp (``fedmed.clients.app``) turns coordinator instructions into calls here.
Keeping it separate lets the baselines and tests drive a site directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedmed.clients.site_home import SiteHome
from fedmed.device import pick_device
from fedmed.tasks import SiteData, TaskPack, get_task
from fedmed.training.loop import (
    LoopWrapper,
    TrainResult,
    TrainSettings,
    get_weights,
    set_weights,
    train_round,
)


@dataclass
class HospitalSite:
    """A site's task pack, data splits and model, on this node's device."""

    name: str
    pack: TaskPack
    data: SiteData
    device: torch.device
    # The node's memory limit for DP-SGD: examples per forward/backward pass (0: none);
    # from its node config or the federation's ``max-physical-batch``.
    max_physical_batch: int = 0

    @classmethod
    def open(
        cls, task: str, site: str, data_dir: str | Path | None, seed: int,
        home: Path | None = None,
    ) -> HospitalSite:
        """Load ``site``'s data for ``task`` (DataError / ConfigError on bad input).

        ``home``: the site home whose de-id admission stage the data pass (created with the
        default policy if absent, as a round would): the gate's state lives there and every
        admitted batch is signed into its audit log before the data can be trained on.
        Without it (local studies, tests) the pack's unsigned local stage is used.
        """
        admission = SiteHome.open(home, site, task).admission() if home is not None else None
        pack = get_task(task, admission)
        data = pack.load_site(site, Path(data_dir) if data_dir else None, seed)
        return cls(name=site, pack=pack, data=data, device=pick_device())

    def train(
        self,
        weights: list[np.ndarray],
        settings: TrainSettings,
        wrap: LoopWrapper | None = None,
    ) -> tuple[list[np.ndarray], TrainResult]:
        """Start from ``weights``, train one round locally, return the new weights.

        ``wrap`` makes the loop private (``fedmed.privacy.trainer.DPTrainer.wrap``); the
        node's privacy check (``fedmed.clients.private_round``) decides whether to pass it.
        """
        model = self.pack.build_model()
        set_weights(model, weights)
        result = train_round(self.pack, model, self.data.train, settings, self.device, wrap=wrap)
        return get_weights(model), result

    def evaluate(self, weights: list[np.ndarray]) -> dict[str, float]:
        """The pack's metrics of ``weights`` on this site's test split."""
        model = self.pack.build_model()
        set_weights(model, weights)
        return self.pack.evaluate(model.to(self.device), self.data.test, self.device)
