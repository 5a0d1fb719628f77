"""Experiment tracking and the model registry (fedmed[tracking]), read back through MLflow.

One tiny heart federation (two sites, two rounds) runs once with ``fedmed run --track``
into its embedded store; every other test reads that run directory or fails before any
simulation. Nothing reaches the network: the store is the run's own sqlite database, and
the unreachable server is a closed port on this machine.
"""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch

from fedmed.cli import main
from fedmed.tracking import mlflow_store
from fedmed.tracking.record import round_metrics

REPO = Path(__file__).resolve().parents[1]
SITES = ("cleveland", "hungary")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("tracking")
    run_dir = base / "run"
    argv = ["run", str(REPO / "examples" / "heart"), "--rounds", "2",
            "--set", f"sites={','.join(SITES)}", "--sites-home", str(base / "sites"),
            "--out", str(run_dir), "--track"]  # fmt: skip
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as env:  # module scope: conftest's isolation is per test
        env.setenv("FEDMED_STATE", str(base / "state"))
        env.setenv("FLWR_HOME", str(base / "state" / "flwr"))
        with redirect_stdout(output), redirect_stderr(output):
            code = main(argv)
    assert code == 0, output.getvalue()
    uri = mlflow_store.embedded_uri(run_dir)
    client = mlflow_store.open_client(uri)
    log = (run_dir / "audit" / "coordinator.jsonl").read_text().splitlines()
    return {
        "run_dir": run_dir,
        "output": output.getvalue(),
        "client": client,
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
        "run_end": [e for e in map(json.loads, log) if e["kind"] == "run-end"][-1],
        "run": client.search_runs([client.get_experiment_by_name("fedmed-heart").experiment_id]),
    }


def test_the_run_reads_back_through_mlflow_client(tracked: dict[str, Any]) -> None:
    client, metrics = tracked["client"], tracked["metrics"]
    assert len(tracked["run"]) == 1
    run = tracked["run"][0]
    assert run.info.status == "FINISHED" and run.info.run_name == metrics["run-id"]
    assert run.data.params["num-server-rounds"] == "2"
    assert run.data.params["sites"] == ",".join(SITES)
    run_id = run.info.run_id
    for site in SITES:
        for key in (f"epsilon/{site}", f"eval/{site}/accuracy", f"fit/{site}/train-loss"):
            history = client.get_metric_history(run_id, key)
            assert [point.step for point in sorted(history, key=lambda p: p.step)] == [1, 2], key
        epsilon = sorted(client.get_metric_history(run_id, f"epsilon/{site}"), key=lambda p: p.step)
        assert epsilon[0].value < epsilon[1].value == metrics["privacy"][site]["epsilon"]
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "report.md", "report.html", "plots", "audit", "model"} <= top
    assert any(a.path.endswith(".png") for a in client.list_artifacts(run_id, "plots"))
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {"model/model.pt"}


def test_the_registered_model_carries_each_sites_privacy_and_the_audit_head(
    tracked: dict[str, Any],
) -> None:
    client, metrics, run_end = tracked["client"], tracked["metrics"], tracked["run_end"]
    [version] = client.search_model_versions("name = 'fedmed-heart'")
    assert version.run_id == tracked["run"][0].info.run_id
    tags = version.tags
    for site in SITES:
        privacy = metrics["privacy"][site]
        assert float(tags[f"epsilon.{site}"]) == privacy["epsilon"]
        assert float(tags[f"delta.{site}"]) == privacy["delta"]
        assert tags[f"accountant.{site}"] == privacy["accountant"]
        assert f"noise_multiplier={privacy['noise_multiplier']}" in tags[f"mechanism.{site}"]
    assert (tags["audit.entry"], tags["audit.seq"], tags["audit.hash"]) == (
        "run-end", str(run_end["seq"]), run_end["hash"]
    )
    assert tags["model.sha256"] == run_end["payload"]["model_sha256"]


def test_models_list_shows_the_provenance(
    tracked: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--run-dir", str(tracked["run_dir"]), "--json"]) == 0
    [model] = json.loads(capsys.readouterr().out)
    assert model["name"] == "fedmed-heart" and model["run"] == tracked["metrics"]["run-id"]
    assert sorted(model["sites"]) == list(SITES)
    for site in SITES:
        assert model["sites"][site]["epsilon"] == tracked["metrics"]["privacy"][site]["epsilon"]
    assert model["audit"]["hash"] == tracked["run_end"]["hash"]


def test_tracking_a_run_twice_is_refused(
    tracked: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "track", str(tracked["run_dir"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "already tracked" in err and len(err.splitlines()) == 1


def test_a_model_the_log_did_not_release_is_refused(
    tracked: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(tracked["run_dir"], copy, ignore=shutil.ignore_patterns("mlruns"))
    state = torch.load(copy / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, copy / "model.pt")
    assert main(["models", "track", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "is not the model the coordinator's log released" in err
    assert not (copy / "mlruns").exists()


def test_round_metrics_keep_nan_scores_and_unbounded_epsilon(tracked: dict[str, Any]) -> None:
    """metrics.json writes NaN and ∞ as null (json_safe): a score is NaN, an ε is ∞."""
    from fedmed.tracking.record import read_run

    record = read_run(tracked["run_dir"])
    entry = record.document["rounds"][0]
    entry["per_site"][SITES[0]]["auc"] = None
    entry["fit"][SITES[0]]["epsilon"] = None
    points = {(p.key, p.step): p.value for p in round_metrics(record)}
    assert points[(f"eval/{SITES[0]}/auc", 1)] != points[(f"eval/{SITES[0]}/auc", 1)]  # NaN
    assert points[(f"epsilon/{SITES[0]}", 1)] == float("inf")


def test_telemetry_is_off() -> None:
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY

    assert MLFLOW_DISABLE_TELEMETRY.get()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "list"], "needs --tracking-uri URI or --run-dir DIR"),
        (["models", "list", "--run-dir", "/nonexistent/run"], "/nonexistent/run"),
        (["models", "list", "--tracking-uri", "sqlite:////nonexistent/m.db"], "not found"),
        (["models", "track", "/nonexistent/run"], "run directory not found: /nonexistent/run"),
        (["run", "{heart}", "--track", "--tracking-uri", "http://127.0.0.1:9"],
         "cannot reach the MLflow tracking server http://127.0.0.1:9"),
        (["run", "{heart}", "--tracking-uri", "http://127.0.0.1:9"], "used with --track"),
        (["run", "{heart}", "--track", "--coordinator", "127.0.0.1:9", "--kit", "/tmp"],
         "fedmed models track RUN_DIR"),
    ],
)  # fmt: skip
def test_bad_tracking_input_is_one_line_and_exit_2(
    repo: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a.replace("{heart}", str(repo / "examples" / "heart")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
