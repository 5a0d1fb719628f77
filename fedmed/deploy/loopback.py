"""A whole deployed federation on one machine: provisioned kits, a coordinator, N nodes.

The tests and ``bench/deploy_overhead.py`` need the real thing — Flower's SuperLink
and SuperNodes as separate processes, TLS, node authentication — on loopback, with
free ports and nothing left running afterwards. :class:`LoopbackFederation` is a
context manager that provisions into a folder, starts the coordinator and one node
per site (each on its own free runtime port) and stops every process on exit, even
when a start fails half-way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedmed.deploy.coordinator import Coordinator
from fedmed.deploy.kit import SITES_DIR, load_coordinator_kit, load_site_kit
from fedmed.deploy.node import Node
from fedmed.deploy.processes import free_port
from fedmed.deploy.provision import provision


class LoopbackFederation:
    """Provision ``sites`` under ``root`` and run them all on 127.0.0.1."""

    def __init__(
        self,
        root: Path,
        federation: str,
        sites: Sequence[str],
        data_dir: Path,
        echo: Callable[[str], None] | None = None,
        memory_state: bool = False,
    ) -> None:
        self.root = Path(root)
        self.memory_state = memory_state  # the coordinator's (Coordinator's docstring)
        self.federation = federation
        self.sites = list(sites)
        self.data_dir = Path(data_dir)
        self.echo = echo
        self.port = free_port()
        self._ports = {self.port}
        self.address = f"127.0.0.1:{self.port}"
        self.kits = self.root / "kits"
        self.coordinator: Coordinator | None = None
        self.nodes: dict[str, Node] = {}

    def _new_port(self) -> int:
        """A free port not handed out before by this federation."""
        while (port := free_port()) in self._ports:
            continue
        self._ports.add(port)
        return port

    def provision(self) -> None:
        if not self.kits.exists():
            provision(self.kits, self.federation, self.sites, [self.address])

    def start_coordinator(self) -> Coordinator:
        self.coordinator = Coordinator(
            load_coordinator_kit(self.kits), self.root / "coordinator", echo=self.echo,
            memory_state=self.memory_state,
        )
        self.coordinator.start()
        return self.coordinator

    def node(self, site: str, kit: Path | None = None, home: str | None = None) -> Node:
        """A node for ``site`` (not started), with its own state, site home (``home``: the
        name of another one) and port."""
        return Node(
            load_site_kit(kit or self.kits / SITES_DIR / site),
            self.data_dir,
            self.root / "site-homes" / (home or site),
            self.address,
            self.root / f"node-{site}",
            runtime_port=self._new_port(),
            echo=self.echo,
        )

    def start_node(self, site: str) -> Node:
        self.start_nodes([site])
        return self.nodes[site]

    def start_nodes(self, sites: Sequence[str]) -> None:
        """Start several nodes at once (each waits for the coordinator's accept)."""
        nodes = [self.node(site) for site in sites]  # ports picked here, one thread
        self.nodes.update(zip(sites, nodes, strict=True))
        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            for future in [pool.submit(node.start) for node in nodes]:
                future.result()

    def stop_node(self, site: str) -> None:
        node = self.nodes.pop(site, None)
        if node is not None:
            node.stop()

    def revive(self) -> None:
        """Restart whatever is not running: the coordinator, then every dead node.

        Scenarios share one federation (starting it costs a minute on two cores); one
        that crashed a process on purpose — or failed half-way through doing so —
        leaves the next a whole federation instead of a cascade of failures.
        """
        if self.coordinator is None or not self.coordinator.running():
            if self.coordinator is not None:
                self.coordinator.stop()  # its helpers, by PID
            self.start_coordinator()
        dead = [s for s in self.sites if s not in self.nodes or not self.nodes[s].running()]
        for site in dead:
            self.stop_node(site)
        if dead:
            self.start_nodes(dead)

    def __enter__(self) -> LoopbackFederation:
        try:
            self.provision()
            self.start_coordinator()
            self.start_nodes(self.sites)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for site in list(self.nodes):
            with contextlib.suppress(Exception):
                self.stop_node(site)
        if self.coordinator is not None:
            self.coordinator.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()
