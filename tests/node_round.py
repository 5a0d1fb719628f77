"""One DP-SGD round and the final evaluation of an ICD pack through the node's own code,
shared by the ICD packs' tests (tests/test_icd_minilm.py, tests/test_icd_sentences.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig, load_federation
from fedmed.explain.outcome import COUNT, ERROR, FINAL_ROUND, FOLDER
from fedmed.server.app import evaluate_config_fn, fit_config_fn
from fedmed.tasks import SiteData, TaskPack
from fedmed.training.loop import get_weights

CPU = torch.device("cpu")


def dp_round_through_the_node(pack: TaskPack, data: SiteData, example: Path,
                              homes: Path) -> FederationConfig:
    """Round 1 of ``example`` (one local epoch) at the site of ``data`` (site home, policy,
    ledger, Opacus), then the final evaluation with the explainer; asserts what a node must
    report and returns the example's config. In-process: a Ray federation would encode every
    site's notes again in each simulated node, minutes of CPU here; the Simulation Engine runs
    the same client code for every pack (tests/test_spine_federation.py)."""
    config = replace(FederationConfig.from_run_config(load_federation(example)),
                     num_server_rounds=1, local_epochs=1)
    site = data.site
    SiteHome.open(homes / site, site, pack.name)
    client = HospitalClient(HospitalSite(site, pack, data, CPU), homes / site)
    torch.manual_seed(0)
    weights, count, metrics = client.fit(get_weights(pack.build_model()),
                                         fit_config_fn(config, pack, "run-1")(1))
    assert metrics["refused"] == 0 and count == len(data.train)
    assert metrics["noise-multiplier"] > 0 and 0 < metrics["epsilon"] <= 1.0 + 1e-6
    final = {**evaluate_config_fn("run-1")(1), "num-rounds": 1, FINAL_ROUND: True}
    _, _, scores = client.evaluate(weights, final)
    assert set(scores) >= {"micro_f1", "macro_f1", "precision_at_5"}
    assert scores[COUNT] == 2 and not scores.get(ERROR)
    assert sorted(p.name for p in Path(str(scores[FOLDER])).iterdir()) == [
        f"evidence-{site}.json", f"evidence-{site}.md"]
    return config
