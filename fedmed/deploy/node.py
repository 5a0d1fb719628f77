"""The hospital node process: Flower's SuperNode with TLS, its node key and its node config.

``fedmed node start`` checks what it can before starting Flower (the key file's
mode, the local runtime port, a TLS handshake with the coordinator using the kit's
CA: :mod:`fedmed.deploy.probe`), then runs Flower's ``flower-supernode`` entry point
through :mod:`fedmed.deploy.supernode_entry` (idle pauses capped at ``--poll`` seconds;
``--isolation process`` with fedmed's warm ClientApp worker, :mod:`fedmed.deploy.warm_worker`,
as the process that runs the ClientApps) with:

- ``--root-certificates <kit>/ca.crt``: trust only the federation's CA;
- ``--auth-supernode-private-key <kit>/node-auth.key``: prove the node is registered;
- ``--node-config <state>/node-config.toml``: ``site``, ``data-dir``, ``site-home`` —
  what the ClientApp reads to find this hospital's data and site home
  (``fedmed.clients.hospital.site_for_context``) — and, when set, ``max-physical-batch``,
  this machine's memory limit for DP-SGD (``fedmed.privacy.trainer``);
- ``--port``: the node's local Runtime API (ClientApp processes talk to it; it binds
  127.0.0.1 only). Two nodes on one machine need two ports.

The node is up once Flower logs its SuperNode id (it was authenticated); a refused
key (Flower error 2004) or a TLS failure ends the command with one line.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from fedmed.audit.keys import KEY_FILE
from fedmed.clients.site_home import SiteHome
from fedmed.deploy.errors import (
    CoordinatorUnreachable,
    NodeNotRegistered,
    PortInUse,
    ProcessFailed,
    WrongCertificate,
)
from fedmed.deploy.kit import SiteKit
from fedmed.deploy.pki import check_node_private_key
from fedmed.deploy.probe import probe_coordinator
from fedmed.deploy.processes import ChildProcess, port_free, service_env
from fedmed.deploy.supernode_entry import DEFAULT_POLL_SECONDS, POLL_FLAG
from fedmed.errors import DataError
from fedmed.privacy.policy import load_policy

CONNECTED = r"SuperNode ID: (\d+)"
OUTCOMES = {
    CONNECTED: "connected",
    r"code: 2004|Failed to activate SuperNode|No SuperNode found": "not-registered",
    r"CERTIFICATE_VERIFY_FAILED": "wrong-certificate",
    r"address already in use": "port-in-use",
    r"Exit Code: \d+": "exit",
}
DEFAULT_RUNTIME_PORT = 9094


@dataclass(frozen=True)
class NodeLayout:
    """Where a node keeps Flower's home, its node config and its log (``--state``)."""

    root: Path

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    @property
    def node_config(self) -> Path:
        return self.root / "node-config.toml"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "supernode.log"


def seed_site_home(kit: SiteKit, home: Path) -> bool:
    """Create ``home`` from the kit (its policy and audit key) if it does not exist yet.

    An existing home is never touched: it holds the ledger of privacy already spent.
    Returns whether a home was created.
    """
    home = Path(home)
    if home.exists():
        return False
    SiteHome.create(
        home,
        kit.site,
        load_policy(kit.policy),
        signing_key=kit.audit_keys / KEY_FILE,
        details={"federation": kit.federation},
    )
    return True


def classify(lines: list[str]) -> str | None:
    """The most specific failure named anywhere in ``lines`` (Flower's exit notices)."""
    text = "\n".join(lines)
    for pattern, outcome in OUTCOMES.items():
        if outcome not in ("connected", "exit") and re.search(pattern, text):
            return outcome
    return None


class Node:
    """A running SuperNode for one site kit; a context manager so it is always stopped."""

    def __init__(
        self,
        kit: SiteKit,
        data_dir: Path,
        site_home: Path,
        coordinator: str,
        state: Path,
        runtime_port: int = DEFAULT_RUNTIME_PORT,
        echo: Callable[[str], None] | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        max_physical_batch: int = 0,
    ) -> None:
        self.kit = kit
        self.data_dir = Path(data_dir).resolve()
        self.site_home = Path(site_home).resolve()
        self.coordinator = coordinator
        self.layout = NodeLayout(Path(state).resolve())
        self.runtime_port = runtime_port
        self.poll_seconds = poll_seconds
        self.max_physical_batch = max_physical_batch
        self.echo = echo
        self.process: ChildProcess | None = None
        self.node_id: str = ""

    def preflight(self, probe_timeout: float = 5.0) -> None:
        """Everything checkable before Flower starts, each failure a one-line error."""
        check_node_private_key(self.kit.node_key)
        if not self.data_dir.is_dir():
            raise DataError(f"{self.data_dir}: data folder not found")
        if not port_free("127.0.0.1", self.runtime_port):
            raise PortInUse(
                f"node runtime port 127.0.0.1:{self.runtime_port} is in use (another node on "
                "this machine?); pass --port with a free port"
            )
        probe_coordinator(self.coordinator, self.kit.ca_cert, timeout=probe_timeout)

    def write_node_config(self) -> Path:
        values: dict[str, str | int] = {
            "site": self.kit.site,
            "data-dir": str(self.data_dir),
            "site-home": str(self.site_home),
        }
        if self.max_physical_batch:
            values["max-physical-batch"] = self.max_physical_batch
        self.layout.node_config.write_text(tomli_w.dumps(values), encoding="utf-8")
        return self.layout.node_config

    def argv(self) -> list[str]:
        """Flower's SuperNode through fedmed's wrapper (:mod:`fedmed.deploy.supernode_entry`:
        shorter idle pauses, the warm ClientApp worker, ``--isolation process``)."""
        return [
            sys.executable, "-m", "fedmed.deploy.supernode_entry",
            POLL_FLAG, str(self.poll_seconds),
            "--superlink", self.coordinator,
            "--root-certificates", str(self.kit.ca_cert),
            "--auth-supernode-private-key", str(self.kit.node_key),
            "--node-config", str(self.layout.node_config),
            "--port", str(self.runtime_port),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return service_env(self.layout.root, self.layout.flwr_home)

    def start(self, timeout: float = 60.0) -> str:
        """Preflight, start the SuperNode, wait until the coordinator accepted it; its id."""
        self.preflight()
        self.layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        seed_site_home(self.kit, self.site_home)
        self.write_node_config()
        self.process = ChildProcess(
            f"supernode-{self.kit.site}",
            self.argv(),
            self.layout.log,
            env=self.env(),
            cwd=self.layout.root,
            echo=self.echo,
        ).start()
        outcome, line = self.process.wait_for(OUTCOMES, timeout)
        if outcome == "connected":
            self.node_id = line.rsplit(":", 1)[-1].strip()
            self.process.remember_descendants()
            return self.node_id
        alive = outcome is None and self.process.returncode() is None
        if outcome is not None:  # Flower prints its exit notice over several lines
            self.process.wait_for({}, timeout=10.0)
            outcome = classify(self.process.tail(40)) or outcome
        self.stop()
        if outcome == "not-registered":
            raise NodeNotRegistered(
                f"the coordinator at {self.coordinator} refused {self.kit.site}'s node key "
                f"({self.kit.node_key}): it is not registered. The coordinator registers the keys "
                "in its kit's node-keys/ at `fedmed coordinator start` or `fedmed coordinator "
                "register`; check the kit is from the same provisioning"
            )
        if outcome == "wrong-certificate":
            raise WrongCertificate(
                f"TLS to {self.coordinator} failed: the coordinator's certificate is not signed "
                f"by {self.kit.ca_cert}"
            )
        if outcome == "port-in-use":
            raise PortInUse(f"node runtime port {self.runtime_port} is in use; pass --port")
        if alive:
            raise CoordinatorUnreachable(
                f"the coordinator at {self.coordinator} did not accept the node in "
                f"{timeout:.0f} s; log: {self.layout.log}"
            )
        last = " | ".join(x for x in self.process.tail(6) if x.strip())
        raise ProcessFailed(f"the SuperNode stopped: {last} (log {self.layout.log})")

    def running(self) -> bool:
        """Whether the SuperNode we started is still alive (it may have crashed or been killed)."""
        return self.process is not None and self.process.running()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
