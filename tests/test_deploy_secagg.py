"""SecAgg+ is a switch on one code path: FedAvg with and without it agree (Ray simulation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.common import Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fedmed.cli import main
from fedmed.clients.secagg import secagg_when_requested
from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.server.secagg import secagg_workflow

SITES = "cleveland,hungary,switzerland"


def _final_weights(run_dir: Path) -> list[np.ndarray]:
    return [t.numpy() for t in torch.load(run_dir / "model.pt").values()]


@pytest.mark.timeout(240)
def test_fedavg_with_and_without_secagg_agree(repo: Path, tmp_path: Path) -> None:
    """Same seed, fresh site homes: only SecAgg+'s quantization (2^22 levels) differs."""
    runs = {}
    for secagg in ("false", "true"):
        out = tmp_path / f"secagg-{secagg}"
        args = [
            "run", str(repo / "examples" / "heart"), "--rounds", "1", "--out", str(out),
            "--sites-home", str(tmp_path / f"homes-{secagg}"),
            "--set", f"sites={SITES}", "--set", f"secagg={secagg}",
        ]  # fmt: skip
        assert main(args) == 0
        runs[secagg] = _final_weights(out)
    gap = max(
        float(np.max(np.abs(a - b))) for a, b in zip(runs["false"], runs["true"], strict=True)
    )
    assert 0 < gap < 1e-4  # quantized (so not identical), but the same model


def test_the_node_mod_passes_plain_messages_through() -> None:
    """One ClientApp serves both kinds of run: without SecAgg+ config the mod steps aside."""
    message = Message(RecordDict(), dst_node_id=1, message_type="train")
    reply = Message(RecordDict(), reply_to=message)
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
