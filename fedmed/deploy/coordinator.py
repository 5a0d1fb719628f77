"""The coordinator process: Flower's SuperLink with TLS, node authentication and a database.

What ``fedmed coordinator start`` runs, and why each flag:

- ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile``: TLS on the one port where
  Flower 1.42 serves the Fleet (nodes), Control (``flwr run``) and Runtime
  (ServerApp) APIs.
- ``--enable-supernode-auth``: only nodes whose public key was registered may
  connect; the kit's keys are registered right after start (:mod:`fedmed.deploy.registry`).
- ``--disable-runtime-dependency-installation``: Flower would otherwise ``uv sync``
  each submitted app's dependencies (measured: a 5.6 GB CUDA torch).
- ``--database <state>/superlink.db``: runs and registered nodes survive a restart.
  With ``memory_state`` (``fedmed coordinator start --memory-state``) the SuperLink keeps
  its state in memory instead (Flower's ``:flwr-in-memory:``, its own default): measured
  (docs/operator-guide.md § 10), Flower's SQL link state is most of what a deployed round
  still costs — every node pull, object push and reply passes through SQLAlchemy on
  SQLite. The price: a restart forgets the node registrations and their ids, so the start
  registers every kit key afresh (``registered.json`` is reset) and running nodes must be
  restarted to connect under their new ids; fedmed's own run directories, checkpoints,
  audit logs and the sites' ledgers are files either way.

The SuperLink runs with ``FEDMED_STATE=<state>`` and ``<state>`` as its working
directory, and its ServerApp processes inherit both: run directories land in
``<state>/runs`` and the coordinator's audit key is ``<state>/coordinator/keys``
(copied from the kit on first start).

Once the SuperLink serves, runs that a killed ServerApp left "running" in their
``metrics.json`` are recorded as interrupted (:mod:`fedmed.deploy.runs`); ``fedmed
coordinator start`` repeats that check every few seconds while it runs.
"""

from __future__ import annotations

import ipaddress
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedmed.audit.keys import KEY_FILE
from fedmed.deploy.errors import PortInUse, ProcessFailed
from fedmed.deploy.flwr_cli import Connection
from fedmed.deploy.kit import CoordinatorKit
from fedmed.deploy.pki import split_address
from fedmed.deploy.processes import ChildProcess, flower_command, port_free, service_env
from fedmed.deploy.registry import REGISTRY_FILE, Reconciled, reconcile
from fedmed.deploy.runs import HOME_DIR, RunState, reconcile_runs

READY = r"Uvicorn running on https?://"
FAILURES = {
    r"address already in use": "port-in-use",
    r"Exit Code: \d+": "exit",
    r"Traceback \(most recent call last\)": "exit",
    r"Application startup failed": "exit",
}
START_TIMEOUT = 90.0
# Flower's name for a SuperLink state kept in memory (flwr.supercore.constant).
IN_MEMORY_DATABASE = ":flwr-in-memory:"


@dataclass(frozen=True)
class CoordinatorLayout:
    """Where a coordinator keeps its state (the ``--state`` folder)."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "superlink.log"

    @property
    def home(self) -> Path:
        """The deployed ServerApps' coordinator home: audit key, witness records, node
        identities, the run index (:mod:`fedmed.server.run_index`)."""
        return self.root / HOME_DIR

    @property
    def audit_keys(self) -> Path:
        return self.home / "keys"

    @property
    def runs(self) -> Path:
        return self.root / "runs"


def listen_address(kit: CoordinatorKit, listen: str | None) -> tuple[str, int]:
    """Where to bind: ``listen`` if given; else the kit's port, on loopback only if every
    address in the certificate is loopback (a coordinator nobody else could dial anyway)."""
    if listen:
        host, port = split_address(listen)
        return host, port or split_address(kit.addresses[0])[1] or 9092
    hosts = [split_address(a)[0] for a in kit.addresses]
    port = split_address(kit.addresses[0])[1] or 9092
    return ("127.0.0.1" if all(_is_loopback(h) for h in hosts) else "0.0.0.0"), port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_address(kit: CoordinatorKit, port: int) -> str:
    """An address in the certificate that this machine can dial (for registration)."""
    for address in kit.addresses:
        host, _ = split_address(address)
        if _is_loopback(host):
            return f"{host}:{port}"
    return f"{split_address(kit.addresses[0])[0]}:{port}"


def seed_coordinator_keys(kit: CoordinatorKit, keys: Path) -> None:
    """Give the coordinator home (its ``keys`` folder) the kit's audit key, once: the key
    the kit's trust anchors name (``fedmed audit verify --kit``). An existing key is kept."""
    target = Path(keys) / KEY_FILE
    source = kit.audit_keys / KEY_FILE
    if not target.exists() and source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(source, target)
        target.chmod(0o600)


class Coordinator:
    """A running SuperLink for one kit; use as a context manager so it is always stopped."""

    def __init__(
        self,
        kit: CoordinatorKit,
        state: Path,
        listen: str | None = None,
        echo: Callable[[str], None] | None = None,
        memory_state: bool = False,
    ) -> None:
        self.kit = kit
        self.layout = CoordinatorLayout(Path(state).resolve())
        self.memory_state = memory_state
        self.host, self.port = listen_address(kit, listen)
        self.echo = echo
        self.process: ChildProcess | None = None
        self.interrupted: list[RunState] = []  # runs found interrupted at start
        self.connection = Connection(
            self.layout.flwr_home, local_address(kit, self.port), kit.ca_cert
        )

    def _prepare_state(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.layout.runs.mkdir(exist_ok=True)
        if self.memory_state:  # a fresh SuperLink knows no key: register them all again
            (self.layout.root / REGISTRY_FILE).unlink(missing_ok=True)
        seed_coordinator_keys(self.kit, self.layout.audit_keys)
        self.connection.write()

    def argv(self) -> list[str]:
        return [
            flower_command("flower-superlink"),
            "--ssl-ca-certfile", str(self.kit.ca_cert),
            "--ssl-certfile", str(self.kit.cert),
            "--ssl-keyfile", str(self.kit.key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--database", IN_MEMORY_DATABASE if self.memory_state else str(self.layout.database),
            "--host", self.host,
            "--port", str(self.port),
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        return service_env(self.layout.root, self.layout.flwr_home)

    def start(self, timeout: float = START_TIMEOUT) -> Reconciled:
        """Start the SuperLink, wait until it serves, register the kit's nodes."""
        if not port_free(self.host, self.port):
            raise PortInUse(
                f"cannot listen on {self.host}:{self.port}: the port is in use (another "
                f"coordinator? `ss -ltnp | grep :{self.port}`); stop it or pass --listen HOST:PORT"
            )
        self._prepare_state()
        self.process = ChildProcess(
            "superlink",
            self.argv(),
            self.layout.log,
            env=self.env(),
            cwd=self.layout.root,
            echo=self.echo,
        ).start()
        outcome, line = self.process.wait_for({READY: "ready", **FAILURES}, timeout)
        if outcome == "port-in-use":
            raise PortInUse(f"cannot listen on {self.host}:{self.port}: {line.strip()}")
        if outcome != "ready":
            if outcome is not None:  # let it finish printing why and exit
                self.process.wait_for({}, timeout=10.0)
            self.stop()
            raise ProcessFailed(self.failure_message("did not start", timeout))
        self.process.remember_descendants()
        registered = reconcile(self.kit, self.connection, self.layout.root)
        self.interrupted = self.reconcile_runs()
        return registered

    def reconcile_runs(self, ask_when_unsure: bool = True) -> list[RunState]:
        """Record the end of runs whose ServerApp died without writing it — left by the last
        coordinator (at start) or killed while this one runs (``fedmed coordinator start``
        calls this every few seconds): :func:`fedmed.deploy.runs.reconcile_runs`."""
        return reconcile_runs(self.layout.root, self.connection, ask_when_unsure)

    def failure_message(self, what: str, timeout: float) -> str:
        assert self.process is not None
        code = self.process.returncode()
        why = f"exited with code {code}" if code is not None else f"no answer in {timeout:.0f} s"
        last = " | ".join(line for line in self.process.tail(4) if line.strip())
        return f"the SuperLink {what} ({why}); log {self.layout.log}: {last}"

    def running(self) -> bool:
        """Whether the SuperLink we started is still alive (it may have crashed or been killed)."""
        return self.process is not None and self.process.running()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
