"""``fedmed run --ray-address``: the Simulation Engine's nodes on an existing Ray cluster
(issue 17 item 4), against a real cluster of two Ray nodes on this machine.

The cluster is what an operator starts: ``ray start --head`` with one CPU and its temporary
files in the test's state folder, and a second node joining it with ``ray start --address``
(a separate raylet, as on a second machine). ``fedmed run`` then runs a 2-site, 1-round heart
federation with ``--ray-address`` through the real command line, and the test asks the
cluster's control store which nodes ran Flower's ``ClientAppActor``: with one CPU a node and
``--node-cpus 1``, the two actors can only fit one on each Ray node. Both Ray nodes are
stopped by their own process ids (never ``ray stop``, which ends every Ray process of the
machine, other runs' too).

Starting two Ray nodes and a run on 2 shared cores takes one to two minutes (75 s measured),
so that test runs with ``FEDMED_DEPLOY_SLOW=1`` (``make test-deploy``), like the loopback
deployment; the checks of the options and of the backend config run always.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmed.simulation import NodeResources
from fedmed.state import ray_temp_dir

REPO = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")

slow = pytest.mark.skipif(
    os.environ.get("FEDMED_DEPLOY_SLOW") != "1",
    reason="a real two-node Ray cluster takes minutes; set FEDMED_DEPLOY_SLOW=1 (make test-deploy)",
)


def test_the_backend_joins_a_cluster_or_starts_its_own() -> None:
    """What ``ray.init`` gets: a cluster's address and nothing it would refuse, or a private
    instance that never joins a cluster recorded in the same temporary folder."""
    head = "head.cluster.example:6379"
    cluster = NodeResources(head, node_cpus=2, node_gpus=0.5).backend_config(100)
    assert cluster["client_resources"] == {"num_cpus": 2, "num_gpus": 0.5}
    assert cluster["init_args"]["address"] == head
    assert not {"num_cpus", "num_gpus", "_temp_dir"} & set(cluster["init_args"])
    local = NodeResources().backend_config(100)
    assert local["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert local["init_args"]["address"] == "local"
    assert local["init_args"]["_temp_dir"] == str(ray_temp_dir())
    assert local["init_args"]["num_cpus"] == min(100, os.cpu_count() or 1)
    assert NodeResources(node_cpus=3).backend_config(1)["init_args"]["num_cpus"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--node-cpus", "0"], "--node-cpus must be a finite number > 0"),
        (["--node-gpus", "-1"], "--node-gpus must be a finite number >= 0"),
        (["--ray-address", "local"], "leave it out"),
        (["--ray-address", "127.0.0.1:1", "--coordinator", "127.0.0.1:2"], "--ray-address runs"),
    ],
)
def test_bad_cluster_options_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedmed.cli import main

    assert main(["run", str(REPO / "examples" / "heart"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ray_node(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start ... --block``: it stays in the foreground and, on SIGTERM, stops the Ray
    processes it started (its own session, so nothing else is signalled)."""
    return subprocess.Popen(
        [str(RAY), "start", "--block", "--disable-usage-stats", *args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
        process.wait(timeout=10)


def _cluster_nodes(address: str) -> list[str]:
    """The alive Ray nodes' ids, asked through the cluster's own client (a short process)."""
    probe = (
        "import json, logging, ray\n"
        f"ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False)\n"
        "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))\n"
        "ray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict]:
    """A head (1 CPU) and a second node (1 CPU) on this machine; both stopped after."""
    temp = ray_temp_dir()  # <state>/ray (through a short link if the path is long)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = _ray_node(
        ["--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={temp}",
         "--include-dashboard=false", f"--ray-client-server-port={_free_port()}",
         f"--dashboard-agent-listen-port={_free_port()}"],
        tmp_path / "head.log",
    )  # fmt: skip
    nodes: list[subprocess.Popen[bytes]] = [head]
    try:
        _wait_for_nodes(address, 1, head, tmp_path / "head.log")
        worker = _ray_node(
            [f"--address={address}", "--num-cpus=1",
             f"--dashboard-agent-listen-port={_free_port()}"],
            tmp_path / "worker.log",
        )  # fmt: skip
        nodes.insert(0, worker)
        _wait_for_nodes(address, 2, worker, tmp_path / "worker.log")
        yield {"address": address, "temp": temp}
    finally:
        for process in nodes:  # the worker first, then the head
            _stop(process)


def _wait_for_nodes(
    address: str, count: int, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"ray start exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if len(_cluster_nodes(address)) >= count:
                return
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError):
            pass
        time.sleep(2)
    pytest.fail(f"the Ray cluster at {address} did not reach {count} node(s)")


def _client_app_actor_nodes(address: str) -> set[str]:
    """The Ray nodes on which Flower's ClientAppActor ran (alive or finished): the cluster
    control store's actor table (``ray._private.state``: the public state API needs the
    dashboard, which this cluster runs without)."""
    probe = (
        "import json, logging, ray\n"
        "from ray._private import state\n"
        f"ray.init(address={address!r}, logging_level=logging.ERROR, log_to_driver=False)\n"
        "print(json.dumps([a['Address']['NodeID'] for a in state.actors().values()\n"
        "                  if a['ActorClassName'] == 'ClientAppActor']))\n"
        "ray.shutdown()\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, check=True)  # fmt: skip
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@slow
def test_a_federation_runs_its_nodes_on_the_ray_cluster(cluster: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "fedmed.cli", "run", str(REPO / "examples" / "heart"),
         "--rounds", "1", "--set", "sites=cleveland,hungary", "--out", str(out),
         "--ray-address", cluster["address"], "--node-cpus", "1"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"simulated nodes on the Ray cluster at {cluster['address']}" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["rounds"][0]["fit"]) == {"cleveland", "hungary"}
    assert {site for site, s in metrics["privacy"].items() if s["rounds_joined"] == 1} == {
        "cleveland", "hungary"
    }
    # Both Ray nodes ran a simulated hospital: the run used the cluster, not a Ray of its own.
    assert _client_app_actor_nodes(cluster["address"]) == set(_cluster_nodes(cluster["address"]))
    # Ray's files of the run are the cluster's, in the state folder it was started with.
    logs = Path(cluster["temp"]).resolve() / "session_latest" / "logs"
    assert any(logs.glob("python-core-worker-*.log"))
