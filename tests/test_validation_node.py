"""A round that fails at a node spends no ε there (issue 14), without Ray.

The node checks its update for finiteness before it is released, and a training
exception is a signed refusal: the ledger gains no entry, the audit log says why.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_privacy_node import initial_weights, instructions, node

from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig
from fedmed.privacy.ledger import Ledger
from fedmed.privacy.policy import Policy
from fedmed.server.app import fit_config_fn
from fedmed.tasks import get_task
from fedmed.training.loop import get_weights

SITE = "switzerland"  # the smallest hospital: fastest rounds


@pytest.mark.parametrize(
    ("override", "match"),
    [
        # A finite but absurd learning rate: the weights overflow to Inf/NaN during training,
        # or, when the DP noise happens to keep them finite, the loss of the saturated
        # model is NaN: refused either way.
        ({"lr": 3e38}, "is not finite"),
        # What `--set clip-norm=nan` sent before the coordinator checked it: Opacus fails.
        ({"dp-clip-norm": float("nan")}, "nothing released"),
    ],
)
def test_a_round_failing_at_the_node_is_a_signed_refusal_that_spends_no_epsilon(
    tmp_path: Path, override: dict, match: str
) -> None:
    home = tmp_path / "home"
    SiteHome.open(home, SITE, "heart")
    client = HospitalClient(HospitalSite.open("heart", SITE, None, 0), home)
    fit_config = {**fit_config_fn(FederationConfig(num_server_rounds=2), get_task("heart"))(1)}
    fit_config.update(override)
    weights = get_weights(get_task("heart").build_model())

    returned, count, metrics = client.fit(weights, fit_config)

    assert metrics["refused"] == 1 and count == 0, metrics
    assert match in str(metrics["reason"])
    assert metrics["epsilon"] == 0.0  # the site's ε account, unchanged by this round
    assert all(np.array_equal(a, b) for a, b in zip(returned, weights, strict=True))
    assert Ledger.load(home / "ledger.json").releases == []
    log = [json.loads(line) for line in (home / "audit.jsonl").open()]
    assert log[-1]["kind"] == "refusal" and match in log[-1]["payload"]["reason"]
    assert "dp-release" not in [entry["kind"] for entry in log]


def test_nodes_that_failed_are_recorded_in_one_line_each_and_stop_the_run(tmp_path: Path) -> None:
    """Flower's ``failures`` (a node raised instead of replying) used to be noted with the
    whole wrapped traceback and then ignored: with every node failed the round aggregated
    nothing and the run went on to an untrained "final" model, exit 0."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvg

    from fedmed.audit import AuditLog
    from fedmed.outputs import RunDirectory
    from fedmed.server.recording import FederationStopped, RecordingStrategy

    run = tmp_path / "run"
    recorder = RecordingStrategy(
        FedAvg(initial_parameters=ndarrays_to_parameters([np.zeros(2, np.float32)])),
        RunDirectory(run, {"run-id": "r"}), num_rounds=1, primary_metric="accuracy",
        min_nodes=2, audit=AuditLog.open(run / "audit.jsonl", tmp_path / "keys", "coordinator"),
    )  # fmt: skip
    wrapped = ValueError(  # what flwr.server.compat raises for a node's exception
        "Message contains an Error (reason: <class 'flwr.clientapp.client_app."
        "ClientAppException'>:<'\nException ClientAppException occurred. Message: "
        "clip norm must be finite\nTraceback (most recent call last):\n  File \"x.py\"'>). "
        "It originated during client-side execution of a message."
    )
    with pytest.raises(FederationStopped) as stopped:
        recorder.aggregate_fit(1, [], [wrapped, wrapped])
    message = str(stopped.value)
    assert "only 0 site(s) accepted" in message and "Traceback" not in message
    assert message.count("clip norm must be finite") == 2 and "\n" not in message
    events = [e for r in recorder.run_dir.document["rounds"] for e in r["events"]]
    assert [e["detail"] for e in events if e["kind"] == "fit-failure"] == [
        "clip norm must be finite"
    ] * 2
    log = [json.loads(line) for line in (run / "audit.jsonl").open()]
    assert [e["kind"] for e in log].count("fit-failure") == 2


def test_a_ray_wrapped_node_error_becomes_its_own_one_line_message() -> None:
    """The Simulation Engine hands the coordinator an Error whose reason is the repr of a
    Ray task error: the traceback's newlines are written out as backslash-n and the message
    ends in an escaped quote. Only the node's own message may reach the console."""
    from fedmed.server.recording import _describe_failure

    reason = (
        "Error(code=2, reason='<class \\'ray.exceptions.RayTaskError(ClientAppException)\\'>:"
        "<\\'ray::ClientAppActor.run()\\n  File \"client_app.py\", line 144, in __call__\\n"
        "    return self._call(message, context)\\nflwr.clientapp.client_app."
        "ClientAppException: \\nException ClientAppException occurred. Message: "
        "string index out of range\\'>')"
    )
    assert _describe_failure(RuntimeError(reason)) == "string index out of range"


def test_a_diverged_loss_with_finite_weights_is_refused_and_spends_nothing(tmp_path: Path) -> None:
    """Without DP (a site with an unbounded budget) the run is deterministic: at lr 3e38 the
    heart model saturates — its weights stay finite, its loss is NaN. The weights' check
    alone let this round out; the node refuses it on its loss."""
    client = node(tmp_path / "home", Policy(epsilon=math.inf, allowed_tasks=("heart",)))
    weights = initial_weights()
    returned, count, metrics = client.fit(weights, {**instructions(dp=False)(1), "lr": 3e38})
    assert metrics["refused"] == 1 and count == 0, metrics
    assert "the training loss is not finite (nan), nothing released" in metrics["reason"]
    assert all(np.array_equal(a, b) for a, b in zip(returned, weights, strict=True))
    assert Ledger.load(tmp_path / "home" / "ledger.json").releases == []
