"""``max-physical-batch``: a node's memory limit for DP-SGD. Opacus's batch splitting cuts a
logical batch into parts; the mechanism (σ, q, steps), the noise and so the released update
stay the same (fedmed.privacy.trainer), through the node's own entry point
(fedmed.clients.hospital.site_for_context, ``fedmed node start --max-physical-batch``)."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import tomli
import torch
from flwr.common import Context, RecordDict
from flwr.common.config import parse_config_args

from fedmed.cli import build_parser
from fedmed.clients.hospital import HospitalClient, _open_site, site_for_context
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.deid.sitekey import SiteKey
from fedmed.deploy.node import Node
from fedmed.errors import ConfigError
from fedmed.privacy import trainer as trainer_module
from fedmed.privacy.ledger import Ledger
from fedmed.privacy.trainer import DPTrainer, poisson_schedule
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, get_weights, train_round
from tests.test_privacy_node import initial_weights

SITE = "cleveland"


def dp_round(data: torch.utils.data.Dataset, limit: int, settings: TrainSettings,
             passes: list[int] | None = None,
             mode: str = "auto") -> tuple[list[np.ndarray], DPTrainer]:
    """The heart model after a verified DP-SGD round (σ 1, clip 1, a fixed secret seed) on
    ``data`` with the physical limit ``limit``; ``passes`` collects the batch size of every
    forward pass."""
    pack = get_task("heart")
    torch.manual_seed(0)
    model = pack.build_model()
    if passes is not None:
        model.register_forward_pre_hook(lambda _, inputs: passes.append(len(inputs[0])))
    rate, steps = poisson_schedule(len(data), settings.batch_size)  # type: ignore[arg-type]
    planned = settings.local_epochs * steps
    trainer = DPTrainer(1.0, rate, planned, 1.0, pack.loss, task=pack.name,
                        secret_seed=7, max_physical_batch=limit, grad_sample_mode=mode)
    result = train_round(pack, model, data, settings, torch.device("cpu"), wrap=trainer.wrap)
    trainer.verify()  # Opacus ran exactly the planned (σ, q, steps)
    assert result.steps == planned
    return get_weights(model), trainer


@pytest.mark.parametrize(("mode", "used"), [("auto", "bookkeeping"), ("ew", "ew"),
                                             ("hooks", "hooks")])
def test_split_batches_release_the_same_update_in_passes_of_at_most_the_limit(
        mode: str, used: str) -> None:
    data = get_task("heart").load_site(SITE, None, 0).train
    # FedProx on: its proximal term must come once a step, not once a part
    settings = TrainSettings(local_epochs=2, batch_size=64, lr=0.05, seed=0, proximal_mu=0.5)
    whole_passes: list[int] = []
    whole, _ = dp_round(data, 0, settings, whole_passes, mode)
    split_passes: list[int] = []
    split, trainer = dp_round(data, 7, settings, split_passes, mode)
    assert max(whole_passes) > 7  # the logical batches of ~64 ran whole
    assert max(split_passes) <= 7  # the mode check included: it runs one physical batch
    assert trainer.mode_used == used
    # The same noise draws on the same clipped sums: only the order of additions differs.
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_empty_and_split_draws_mix_in_one_round() -> None:
    """Three examples at q = 1/3: about a third of the draws are empty (a step of pure
    noise), others hold two or three examples, split into passes of one."""
    generator = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.randn(3, 26, generator=generator),
                                          torch.randint(0, 2, (3,), generator=generator).float())
    settings = TrainSettings(local_epochs=10, batch_size=1, lr=0.1, seed=0)
    whole, _ = dp_round(data, 0, settings)
    split, _ = dp_round(data, 1, settings)
    for a, b in zip(whole, split, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_negative_limit_or_ghost_clipping_is_refused() -> None:
    loss = torch.nn.functional.binary_cross_entropy_with_logits
    with pytest.raises(ConfigError, match="max-physical-batch must be >= 0"):
        DPTrainer(1.0, 0.1, 10, 1.0, loss, max_physical_batch=-1)
    with pytest.raises(ConfigError, match="cannot split ghost clipping"):
        DPTrainer(1.0, 0.1, 10, 1.0, loss, grad_sample_mode="ghost", max_physical_batch=8)
    with pytest.raises(ConfigError, match="max-physical-batch must be >= 0"):
        FederationConfig.from_run_config({"task": "heart", "max-physical-batch": -2})
    with pytest.raises(ConfigError, match="grad-sample-mode ghost"):
        FederationConfig.from_run_config(
            {"task": "heart", "max-physical-batch": 8, "grad-sample-mode": "ghost"})


def deployed(home: Path, config: FederationConfig, **node: object) -> HospitalClient:
    """The node ``fedmed node start`` runs, from its node config (``node``: extra keys)."""
    _open_site.cache_clear()  # a fresh node process
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={"site": SITE, "site-home": str(home), **node})
    return HospitalClient(*site_for_context(context, config))


def test_the_node_config_limit_reaches_dp_sgd_and_changes_nothing_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two copies of one site home (same key, same ledger, so the same secret noise): the
    node with ``max-physical-batch = 5`` in its node config releases what the node without
    it releases, and its ledger records the same mechanism."""
    limits: list[int] = []
    original = trainer_module.wrap_data_loader

    def spy(**named: object) -> object:
        limits.append(int(named["max_batch_size"]))  # type: ignore[call-overload]
        return original(**named)

    monkeypatch.setattr(trainer_module, "wrap_data_loader", spy)
    SiteHome.open(tmp_path / "split", SITE, "heart")
    SiteKey.load_or_create(tmp_path / "split")  # the secret the noise is drawn from
    shutil.copytree(tmp_path / "split", tmp_path / "whole")
    config = FederationConfig.from_run_config(
        {"task": "heart", "num-server-rounds": 2, "batch-size": 64, "epsilon": 1.0,
         "max-physical-batch": 9})  # the federation's default; the node's own 5 wins
    sent = fit_config_fn(config, get_task("heart"), "run-1")(1)
    split, _, reply = deployed(tmp_path / "split", config, **{"max-physical-batch": 5}).fit(
        initial_weights(), sent)
    assert reply["refused"] == 0 and limits == [5]
    unlimited = FederationConfig.from_run_config({**config.to_run_config(),
                                                  "max-physical-batch": 0})
    whole, _, _ = deployed(tmp_path / "whole", unlimited).fit(initial_weights(), sent)
    assert limits == [5]  # no splitting without a limit
    for a, b in zip(split, whole, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    split_ledger, whole_ledger = (Ledger.load(tmp_path / name / "ledger.json").history()
                                  for name in ("split", "whole"))
    assert split_ledger == whole_ledger  # (σ, q, steps) of every release


def test_a_simulated_node_takes_the_federations_limit(tmp_path: Path) -> None:
    """``fedmed run``'s nodes have no node config of their own: the federation's value."""
    _open_site.cache_clear()
    config = FederationConfig(task="heart", sites_home=str(tmp_path), max_physical_batch=6)
    context = Context(run_id=1, node_id=1, state=RecordDict(), run_config={},
                      node_config={"partition-id": 0, "num-partitions": 4})
    site, _ = site_for_context(context, config)
    assert (site.name, site.max_physical_batch) == ("cleveland", 6)


@pytest.mark.parametrize("bad", [-1, "64", 2.5, True])
def test_a_bad_node_config_limit_is_a_config_error(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match="node config max-physical-batch"):
        deployed(tmp_path / "home", FederationConfig(task="heart"), **{"max-physical-batch": bad})


def test_node_start_writes_the_limit_into_the_node_config(tmp_path: Path) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["node", "start", "--kit", "k", "--data", "d",
                           "--max-physical-batch", "-3"])
    args = parser.parse_args(["node", "start", "--kit", "k", "--data", "d",
                              "--max-physical-batch", "32"])
    assert args.max_physical_batch == 32
    node = Node.__new__(Node)
    node.kit = types.SimpleNamespace(site=SITE)
    node.data_dir, node.site_home = tmp_path / "data", tmp_path / "home"
    node.layout = types.SimpleNamespace(node_config=tmp_path / "node-config.toml")
    for limit, expected in ((32, 32), (0, None)):
        node.max_physical_batch = limit
        path = node.write_node_config()
        written = tomli.loads(path.read_text())
        assert written.get("max-physical-batch") == expected and written["site"] == SITE
        # What the SuperNode hands the ClientApp: Flower's own reading of the file, an int.
        assert parse_config_args([str(path)]).get("max-physical-batch") == expected
