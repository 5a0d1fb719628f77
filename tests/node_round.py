"""One DP-SGD round and the final evaluation of a pack's example through the node's own code,
shared by the packs' tests (tests/test_icd_minilm.py, tests/test_icd_sentences.py,
tests/test_ecg_rhythm.py); and one verified DP-SGD epoch of a pack's model through the
training loop (:func:`verified_dp_epoch`: the per-example gradient tests)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig, load_federation
from fedmed.explain.outcome import COUNT, ERROR, FINAL_ROUND, FOLDER
from fedmed.privacy.trainer import DPTrainer, poisson_schedule
from fedmed.server.app import evaluate_config_fn, fit_config_fn
from fedmed.tasks import SiteData, TaskPack
from fedmed.training.loop import TrainResult, TrainSettings, get_weights, train_round

CPU = torch.device("cpu")
# What the ICD packs' node reports: their scores and the evidence files of their explainer.
ICD_SCORES = {"micro_f1", "macro_f1", "precision_at_5"}
ICD_EVIDENCE = ["evidence-{site}.json", "evidence-{site}.md"]


def verified_dp_epoch(
    pack: TaskPack, model: torch.nn.Module, data: torch.utils.data.Dataset, batch: int
) -> tuple[DPTrainer, TrainResult]:
    """One local epoch of DP-SGD (σ 1, clip 1, ``auto`` mode) of ``model`` on ``data`` through
    ``train_round`` with the node's ``DPTrainer``; raises unless Opacus ran exactly the planned
    (σ, q, steps), and returns the trainer and the result (``result.steps`` is that plan)."""
    rate, steps = poisson_schedule(len(data), batch)  # type: ignore[arg-type]
    trainer = DPTrainer(1.0, rate, steps, 1.0, pack.loss, task=pack.name)
    settings = TrainSettings(local_epochs=1, batch_size=batch, lr=pack.default_lr, seed=0)
    result = train_round(pack, model, data, settings, CPU, wrap=trainer.wrap)
    trainer.verify()
    assert result.steps == steps
    return trainer, result


def dp_round_through_the_node(pack: TaskPack, data: SiteData, example: Path, homes: Path,
                              metrics: set[str], explanations: list[str]) -> FederationConfig:
    """Round 1 of ``example`` (one local epoch) at the site of ``data`` (site home, policy,
    ledger, Opacus), then the final evaluation with the explainer; asserts what a node must
    report — ``metrics`` among the scores, the explanation files named ``explanations`` with
    ``{site}`` filled in — and returns the example's config. In-process: a Ray federation would load
    every site again in each simulated node, minutes of CPU for the text packs; the
    Simulation Engine runs the same client code for every pack
    (tests/test_spine_federation.py)."""
    config = replace(FederationConfig.from_run_config(load_federation(example)),
                     num_server_rounds=1, local_epochs=1)
    site = data.site
    SiteHome.open(homes / site, site, pack.name)
    client = HospitalClient(HospitalSite(site, pack, data, CPU), homes / site)
    torch.manual_seed(0)
    weights, count, reply = client.fit(get_weights(pack.build_model()),
                                       fit_config_fn(config, pack, "run-1")(1))
    assert reply["refused"] == 0 and count == len(data.train)
    assert reply["noise-multiplier"] > 0 and 0 < reply["epsilon"] <= 1.0 + 1e-6
    final = {**evaluate_config_fn("run-1")(1), "num-rounds": 1, FINAL_ROUND: True}
    _, _, scores = client.evaluate(weights, final)
    assert set(scores) >= metrics
    assert scores[COUNT] == len(explanations) and not scores.get(ERROR)
    assert sorted(p.name for p in Path(str(scores[FOLDER])).iterdir()) == sorted(
        name.format(site=site) for name in explanations)
    return config
