"""The node's privacy path without Ray: DP-SGD rounds, ledger, policy, fail-closed refusals."""

from __future__ import annotations

import io
import json
import math
import os
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import create_accountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmed.cli import main
from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.privacy.ledger import Ledger
from fedmed.privacy.policy import Policy
from fedmed.privacy.trainer import DPTrainer, poisson_schedule, validate_model
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.training.loop import TrainSettings, get_weights, train_round

SITE = "switzerland"  # the smallest hospital: fastest rounds


def node(home: Path, policy: Policy | None = None) -> HospitalClient:
    """A heart node with its site home; ``policy`` replaces the default one."""
    SiteHome.open(home, SITE, "heart")
    if policy is not None:
        (home / "policy.toml").write_text(policy.to_toml())
    return HospitalClient(HospitalSite.open("heart", SITE, None, 0), home)


def instructions(rounds: int = 3, run: str = "run-1", **settings: object):  # noqa: ANN201
    config = FederationConfig(num_server_rounds=rounds, **settings)  # type: ignore[arg-type]
    return fit_config_fn(config, get_task("heart"), run)


def initial_weights() -> list[np.ndarray]:
    torch.manual_seed(0)
    return get_weights(get_task("heart").build_model())


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_ledger_epsilon_is_opacus_epsilon_of_the_recorded_history(
    tmp_path: Path, accountant: str
) -> None:
    client = node(tmp_path / "home", Policy(accountant=accountant, allowed_tasks=("heart",)))
    fit_config = instructions(rounds=2, accountant=accountant, epsilon=1.0)
    weights = initial_weights()
    for server_round in (1, 2, 3):  # a third round beyond the plan: ε goes past the run target
        weights, count, metrics = client.fit(weights, fit_config(server_round))
        assert metrics["refused"] == 0 and count == len(client.site.data.train)
    ledger = Ledger.load(tmp_path / "home" / "ledger.json")
    assert len(ledger.releases) == 3
    for index, entry in enumerate(ledger.releases):
        recomputed = create_accountant(mechanism=entry.accountant)
        recomputed.history = [(e.noise_multiplier, e.sample_rate, e.steps)
                              for e in ledger.releases[: index + 1]]
        assert entry.epsilon_after == pytest.approx(recomputed.get_epsilon(delta=entry.delta))
    assert ledger.releases[1].epsilon_after <= 1.0 < ledger.releases[2].epsilon_after
    assert metrics["epsilon"] == ledger.releases[-1].epsilon_after
    assert {e.dataset for e in ledger.releases} == {client.site.data.fingerprint}


def assert_refused(client: HospitalClient, fit_config: dict, match: str) -> dict:
    weights = initial_weights()
    returned, count, metrics = client.fit(weights, fit_config)
    assert metrics["refused"] == 1 and count == 0, metrics
    assert match in str(metrics["reason"])
    assert all(np.array_equal(a, b) for a, b in zip(returned, weights, strict=True))
    return metrics


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda home: (home / "ledger.json").write_text("{not json"), "ledger unreadable"),
        (lambda home: (home / "ledger.json").unlink(), "ledger missing"),
        (lambda home: (home / "policy.toml").write_text("epsilon = 'lots'\n"), "policy"),
        (lambda home: (home / "policy.toml").unlink(), "policy file missing"),
        (lambda home: (home / "audit.jsonl").write_text("{}\n"), "audit"),
        (lambda home: (home / "audit.jsonl").unlink(), "audit log missing"),
    ],
)
def test_damaged_site_home_fails_closed(tmp_path: Path, damage, match: str) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    client = node(home)
    client.fit(initial_weights(), instructions()(1))
    ledger_before = (home / "ledger.json").read_bytes() if (home / "ledger.json").exists() else b""
    damage(home)
    assert_refused(client, instructions()(2), match)
    if (home / "ledger.json").exists():
        assert (home / "ledger.json").read_bytes() in (ledger_before, b"{not json")


@pytest.mark.parametrize(
    ("policy", "settings", "match"),
    [
        (Policy(allowed_tasks=("ecg",)), {}, "not allowed"),
        (Policy(min_noise_multiplier=50.0, allowed_tasks=("heart",)), {}, "below the site minimum"),
        (Policy(allowed_tasks=("heart",)), {"dp": False}, "without differential privacy"),
        (Policy(delta=1e-7, allowed_tasks=("heart",)), {}, "weaker than the site"),
        (Policy(allowed_tasks=("heart",)), {"accountant": "prv"}, "accounts with rdp"),
        (Policy(epsilon=0.2, allowed_tasks=("heart",)), {}, "privacy budget"),
    ],
)
def test_jobs_breaking_the_policy_are_refused_and_signed(
    tmp_path: Path, policy: Policy, settings: dict, match: str
) -> None:
    client = node(tmp_path / "home", policy)
    assert_refused(client, instructions(**settings)(1), match)
    assert Ledger.load(tmp_path / "home" / "ledger.json").releases == []
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "home" / "audit.jsonl").open()]
    assert kinds[-1] == "refusal"


def test_no_dp_job_trains_only_where_the_budget_is_unbounded(tmp_path: Path) -> None:
    client = node(tmp_path / "home", Policy(epsilon=math.inf, allowed_tasks=("heart",)))
    _, count, metrics = client.fit(initial_weights(), instructions(dp=False)(1))
    assert metrics["refused"] == 0 and count > 0 and math.isinf(metrics["epsilon"])
    assert metrics["device"] == client.site.device.type  # where the site trained, for operators
    (tmp_path / "home" / "policy.toml").write_text(Policy(allowed_tasks=("heart",)).to_toml())
    assert_refused(client, instructions()(2), "unbounded")


def test_batchnorm_model_is_refused_with_a_clear_error() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1), nn.Flatten(0))
    with pytest.raises(ConfigError, match=r"BatchNorm \(1\).*GroupNorm"):
        validate_model(model, "toy")
    data = TensorDataset(torch.randn(20, 4), torch.rand(20))
    rate, steps = poisson_schedule(20, 5)
    trainer = DPTrainer(1.0, rate, steps, 1.0, nn.functional.binary_cross_entropy_with_logits)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="BatchNorm"):
        trainer.wrap(model, optimizer, DataLoader(data, batch_size=5))


@pytest.mark.parametrize("mode", ["ew", "hooks", "bookkeeping"])
def test_dp_sgd_takes_noisy_steps_on_empty_poisson_batches(mode: str) -> None:
    pack = get_task("heart")
    data = pack.load_site(SITE, None, 0)
    tiny = TensorDataset(*(t[:4] for t in data.train.tensors))  # q = 1/4: empty draws are common
    rate, steps = poisson_schedule(len(tiny), 1)
    trainer = DPTrainer(1.0, rate, steps * 10, 1.0, pack.loss, grad_sample_mode=mode)
    model = pack.build_model()
    before = [p.detach().clone() for p in model.parameters()]
    settings = TrainSettings(local_epochs=10, batch_size=1, lr=0.1, seed=3)
    result = train_round(pack, model, tiny, settings, torch.device("cpu"), wrap=trainer.wrap)
    trainer.verify()
    assert result.steps == steps * 10 and trainer.mode_used == mode
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_poisson_schedule_matches_opacus_rounding() -> None:
    assert poisson_schedule(82, 16) == (1 / 6, 6)
    assert poisson_schedule(93, 1) == (1 / 92, 92)  # int(1 / (1/93)) == 92 in floating point


def test_new_site_home_has_default_policy_private_key_and_signed_log(tmp_path: Path) -> None:
    home = SiteHome.open(tmp_path / "h", "va", "heart")
    policy = home.policy()
    assert (policy.epsilon, policy.delta, policy.allowed_tasks) == (10.0, 1e-5, ("heart",))
    key = tmp_path / "h" / "keys" / "audit-ed25519.pem"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert (tmp_path / "h" / "audit.jsonl.pub").is_file()
    assert home.ledger().releases == []
    SiteHome.open(tmp_path / "h", "va", "heart")  # reopening never resets
    assert home.audit().head.seq == 1


def test_ledger_show_json_has_the_design_shape(tmp_path: Path) -> None:
    client = node(tmp_path / "home")
    fit_config = instructions()
    client.fit(initial_weights(), fit_config(1))
    client.fit(initial_weights(), fit_config(2))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["ledger", "show", "--site-home", str(tmp_path / "home"), "--json"]) == 0
    document = json.loads(out.getvalue())
    assert set(document) == {"site", "budget", "spent", "releases"}
    assert document["site"] == SITE
    assert set(document["budget"]) == {"epsilon", "delta"} and set(document["spent"]) == {"epsilon"}
    assert [set(r) for r in document["releases"]] == [
        {"run", "round", "noise_multiplier", "sample_rate", "steps", "delta", "accountant",
         "epsilon_after"}
    ] * 2
    assert document["spent"]["epsilon"] == pytest.approx(document["releases"][-1]["epsilon_after"])
    assert main(["ledger", "show", "--site-home", str(tmp_path / "nowhere")]) == 2


def test_choosing_the_gradient_mode_does_not_change_the_training_noise() -> None:
    from fedmed.privacy import trainer as trainer_module

    pack = get_task("heart")
    data = pack.load_site(SITE, None, 0).train
    rate, steps = poisson_schedule(len(data), 16)
    settings = TrainSettings(local_epochs=1, batch_size=16, lr=0.05, seed=5)
    results = []
    for attempt in range(2):  # first with an empty mode cache (probing), then with a warm one
        if attempt == 0:
            trainer_module._MODE_CACHE.clear()
        torch.manual_seed(0)
        model = pack.build_model()
        dp = DPTrainer(2.0, rate, steps, 1.0, pack.loss, grad_sample_mode="auto")
        train_round(pack, model, data, settings, torch.device("cpu"), wrap=dp.wrap)
        results.append(get_weights(model))
    assert all(np.array_equal(a, b) for a, b in zip(*results, strict=True))


def test_malformed_dp_request_is_refused_not_crashed(tmp_path: Path) -> None:
    client = node(tmp_path / "home")
    fit_config = instructions()(1)
    del fit_config["dp-epsilon"]
    assert_refused(client, fit_config, "malformed round instructions")
    fit_config = {**instructions()(1), "dp-accountant": "moments"}
    assert_refused(client, fit_config, "unknown accountant")
