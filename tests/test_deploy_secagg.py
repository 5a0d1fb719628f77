"""SecAgg+ is a switch on one code path: FedAvg with and without it agree (Ray simulation);
its deployed exchanges and node messages stay cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import Context, Message, Metadata, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedmed.cli import main
from fedmed.clients.secagg import secagg_when_requested
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.server.polling_grid import PollingGrid
from fedmed.server.secagg import secagg_workflow

SITES = "cleveland,hungary,switzerland"


def _final_weights(run_dir: Path) -> list[np.ndarray]:
    return [t.numpy() for t in torch.load(run_dir / "model.pt").values()]


@pytest.mark.timeout(240)
def test_fedavg_with_and_without_secagg_agree(repo: Path, tmp_path: Path) -> None:
    """Same seed, fresh site homes: only SecAgg+'s quantization (2^22 levels) differs.

    Without DP: each site draws DP noise from its own secret and the run's id, so two DP
    runs differ by their noise; the sites' policies allow a no-DP job (budget unbounded)."""
    runs = {}
    for secagg in ("false", "true"):
        out = tmp_path / f"secagg-{secagg}"
        homes = tmp_path / f"homes-{secagg}"
        for site in SITES.split(","):
            assert main(["site", "init", "--site-home", str(homes / site), "--site", site,
                         "--task", "heart", "--epsilon", "inf",
                         "--min-noise-multiplier", "0"]) == 0  # fmt: skip
        args = [
            "run", str(repo / "examples" / "heart"), "--rounds", "1", "--out", str(out),
            "--sites-home", str(homes), "--set", "dp=false",
            "--set", f"sites={SITES}", "--set", f"secagg={secagg}", "--set", "explain=false",
        ]  # fmt: skip
        assert main(args) == 0
        runs[secagg] = _final_weights(out)
    gap = max(
        float(np.max(np.abs(a - b))) for a, b in zip(runs["false"], runs["true"], strict=True)
    )
    assert 0 < gap < 1e-4  # quantized (so not identical), but the same model


def _message(message_id: str, reply_to: str = "") -> Message:
    """A train message with its metadata spelled out: ``Message(content, dst_node_id=…)``
    needs the run identity Flower sets only inside a running app (or an earlier test)."""
    metadata = Metadata(
        run_id=1, message_id=message_id, src_node_id=0, dst_node_id=1,
        reply_to_message_id=reply_to, group_id="", created_at=0.0, ttl=3600.0,
        message_type="train",
    )  # fmt: skip
    return Message(RecordDict(), metadata=metadata)


def test_the_node_mod_passes_plain_messages_through() -> None:
    """One ClientApp serves both kinds of run: without SecAgg+ config the mod steps aside."""
    message = _message("instruction")
    reply = _message("reply", reply_to="instruction")
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert secagg_when_requested(message, context, lambda m, c: reply) is reply
    assert RECORD_KEY_CONFIGS not in message.content.config_records


def test_secagg_settings_map_to_flowers_workflow() -> None:
    workflow = secagg_workflow(
        FederationConfig(secagg=True, secagg_num_shares=5, secagg_threshold=0.6,
                         secagg_clipping_range=4.0, secagg_max_weight=500.0)
    )  # fmt: skip
    assert workflow is not None
    assert (workflow.num_shares, workflow.reconstruction_threshold) == (5, 0.6)
    assert (workflow.clipping_range, workflow.max_weight, workflow.timeout) == (4.0, 500.0, None)
    assert secagg_workflow(FederationConfig(secagg=False)) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"client_dp": True}, "client-dp"),
        ({"strategy": "fedmedian"}, "fedmedian needs each site's update"),
        ({"secagg_num_shares": 2.0}, "secagg-num-shares"),
        ({"secagg_clipping_range": 0.0}, "secagg-clipping-range"),
    ],
)
def test_settings_secagg_cannot_honour_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FederationConfig(secagg=True, **settings).validate()


class SlowGrid:
    """A grid whose replies come back a few pulls after the push (like a deployed one)."""

    def __init__(self, ready_after: int) -> None:
        self.ready_after = ready_after
        self.pulls = 0
        self.run = "the wrapped grid's run"

    def push_messages(self, messages: list[Message]) -> list[str]:
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, ids: set[str]) -> list[Message]:
        self.pulls += 1
        if self.pulls < self.ready_after:
            return []
        return [_message(f"reply-{i}", reply_to=i) for i in sorted(ids)]


def _messages(count: int) -> list[Message]:
    return [_message(f"m{n}") for n in range(count)]


def test_the_polling_grid_collects_every_reply_and_keeps_the_grids_other_parts() -> None:
    inner = SlowGrid(ready_after=4)
    grid = PollingGrid(inner)  # type: ignore[arg-type]
    messages = _messages(3)
    replies = list(grid.send_and_receive(messages))
    ids = {m.metadata.message_id for m in messages}
    assert {r.metadata.reply_to_message_id for r in replies} == ids
    assert inner.pulls == 4  # it kept looking until the replies were there, then stopped
    assert grid.run == "the wrapped grid's run"


def test_the_polling_grid_gives_up_at_the_timeout() -> None:
    inner = SlowGrid(ready_after=10**9)
    assert list(PollingGrid(inner).send_and_receive(_messages(2), timeout=0.2)) == []  # type: ignore[arg-type]


def test_secaggs_key_and_unmask_messages_do_not_load_the_training_stack() -> None:
    """Deployed, every SecAgg+ message starts a ClientApp process; three of four per
    round never train, so loading the app must not import torch or Opacus."""
    code = "import sys, fedmed.clients.app; print(sorted({'torch', 'opacus'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
