"""The usual deployment mistakes give one clear line, against a real coordinator on loopback.

One SuperLink (TLS, node authentication, persistent database) serves the module.
Wrong CA, unreachable coordinator and ports in use are caught before Flower
starts (seconds); an unregistered node key is refused by the SuperLink itself.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmed.cli import main
from fedmed.deploy.coordinator import Coordinator
from fedmed.deploy.errors import (
    CoordinatorUnreachable,
    NodeNotRegistered,
    PortInUse,
    WrongCertificate,
)
from fedmed.deploy.kit import load_coordinator_kit, load_site_kit
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.processes import descendants, free_port
from fedmed.deploy.provision import add_site, provision

REPO = Path(__file__).resolve().parents[1]
HEART_DATA = REPO / "fedmed" / "data" / "uci_heart"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackFederation]:
    root = tmp_path_factory.mktemp("deploy-errors")
    federation = LoopbackFederation(root, "heart", ["cleveland"], HEART_DATA)
    federation.provision()
    try:
        federation.start_coordinator()
        yield federation
    finally:
        federation.stop()


def test_a_kit_from_another_federation_is_a_wrong_ca(
    coordinator: LoopbackFederation, tmp_path: Path
) -> None:
    provision(tmp_path / "other", "other", ["x"], [coordinator.address])
    node = coordinator.node("x", kit=tmp_path / "other" / "sites" / "x")
    with pytest.raises(WrongCertificate, match="did not sign"):
        node.start()
    assert node.process is None  # caught before Flower started


def test_nothing_listening_is_unreachable(coordinator: LoopbackFederation) -> None:
    node = coordinator.node("cleveland")
    node.coordinator = f"127.0.0.1:{free_port()}"
    with pytest.raises(CoordinatorUnreachable, match="connection refused"):
        node.start()


def test_an_address_missing_from_the_certificate_is_named(
    coordinator: LoopbackFederation,
) -> None:
    node = coordinator.node("cleveland")
    node.coordinator = f"localhost:{coordinator.port}"  # provisioned for 127.0.0.1 only
    with pytest.raises(WrongCertificate, match="does not name 'localhost'"):
        node.start()


def test_a_second_coordinator_on_the_same_port(
    coordinator: LoopbackFederation, tmp_path: Path
) -> None:
    second = Coordinator(load_coordinator_kit(coordinator.kits), tmp_path / "state")
    with pytest.raises(PortInUse, match=f"127.0.0.1:{coordinator.port}.*in use"):
        second.start()
    assert second.process is None


def test_a_node_runtime_port_in_use(coordinator: LoopbackFederation) -> None:
    node = coordinator.node("cleveland")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", node.runtime_port))
        taken.listen()
        with pytest.raises(PortInUse, match="--port"):
            node.start()


def test_an_unregistered_node_key_is_refused(coordinator: LoopbackFederation) -> None:
    add_site(coordinator.kits, "va")  # provisioned, but the coordinator never registered it
    node = coordinator.node("va")
    with pytest.raises(NodeNotRegistered, match="not registered"):
        node.start()
    assert node.process is not None and not node.process.running()
    assert descendants(node.process.pid) == {}


def test_errors_are_one_line_on_the_command_line(
    coordinator: LoopbackFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = load_site_kit(coordinator.kits / "sites" / "cleveland").root
    code = main(
        [
            "node", "start", "--kit", str(kit), "--data", str(HEART_DATA),
            "--coordinator", f"127.0.0.1:{free_port()}", "--state", str(tmp_path / "n"),
            "--port", str(free_port()),
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedmed: error: coordinator unreachable") and "\n" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("poll", ["0", "5", "soon", "nan"])
def test_an_idle_pause_out_of_range_is_a_usage_error(
    poll: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["node", "start", "--kit", "kit", "--data", "data", "--poll", poll])
    assert exited.value.code == 2
    assert "--poll" in capsys.readouterr().err
