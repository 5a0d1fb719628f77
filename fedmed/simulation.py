"""Run a federation embedded, on Flower's Simulation Engine (Ray backend).

No service has to be running: ``flwr.simulation.run_simulation`` starts the
in-memory SuperLink and the Ray backend inside this process and stops both when
the ServerApp returns. Each simulated node is one site; it gets one CPU (or what
:class:`NodeResources` asks). Ray's temporary files and Flower's home live in the fedmed
state folder.

With a Ray address (``fedmed run --ray-address``) the coordinator and the in-memory
SuperLink still run here, but the nodes run as Ray actors on an existing cluster
(``ray start --head`` on one machine, ``ray start --address`` on the others): the engine's
backend connects with ``ray.init(address=...)`` instead of starting Ray, and Flower sizes
its actor pool from the cluster's resources (one actor per ``node_cpus`` CPUs). The
cluster's temporary files are where its ``ray start --temp-dir`` put them; every machine
needs fedmed installed at the same path (the actors import it) and its site data.

The console is for people: fedmed's round lines and tables. Flower's log and the warnings
raised while the simulation runs go to ``<run dir>/simulation.log`` (:data:`LOG_FILE`), the
simulated nodes' output to Ray's logs in the state folder; ``--debug`` shows them all on the
console as well.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmed.config import FederationConfig
from fedmed.errors import ConfigError
from fedmed.state import prepare_flower_environment, ray_temp_dir
from fedmed.tasks import get_task

LOG_FILE = "simulation.log"  # in the run directory
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WARNINGS_LOGGER = "py.warnings"  # the name logging.captureWarnings uses, for familiarity


@dataclass(frozen=True)
class NodeResources:
    """Where the simulated nodes run and what each one reserves.

    ``ray_address``: an existing Ray cluster (``HOST:PORT`` of its head, or ``auto``); empty
    starts a private Ray instance in this process, as before. ``node_cpus`` / ``node_gpus``:
    the Ray resources each node's actor reserves (fractions allowed: ``0.5`` GPUs puts two
    nodes on a card); Flower runs as many actors at once as the machine or cluster has room
    for, and each site's messages go to a free one.
    """

    ray_address: str = ""
    node_cpus: float = 1.0
    node_gpus: float = 0.0

    def __post_init__(self) -> None:
        if not (self.node_cpus > 0 and self.node_cpus < float("inf")):
            raise ConfigError(f"--node-cpus must be a finite number > 0, got {self.node_cpus}")
        if not (self.node_gpus >= 0 and self.node_gpus < float("inf")):
            raise ConfigError(f"--node-gpus must be a finite number >= 0, got {self.node_gpus}")
        if self.ray_address.strip() == "local":
            raise ConfigError("--ray-address local: leave it out to start Ray in this process")

    def backend_config(self, num_sites: int, debug: bool = False) -> dict[str, Any]:
        """Flower's Simulation Engine backend config (``client_resources``, ``init_args``).

        ``init_args`` goes to ``ray.init``. Without a cluster it starts Ray here with at most
        one CPU per site (never fewer than one node needs), its temporary files in
        ``<state>/ray``; ``address="local"`` makes that so even when a ``ray start`` cluster
        recorded itself in the same folder (``ray.init()`` would join it otherwise, and then
        refuse the CPU count). With a cluster, Ray refuses a CPU count from the driver: the
        cluster's resources, and the temporary folder it was started with, apply.
        """
        init_args: dict[str, Any] = {
            "logging_level": logging.ERROR,
            # The nodes' own output (Flower's and Opacus's warnings, each printed twice) stays
            # in Ray's logs, <state>/ray/session_*/logs; a node's failure reaches the console
            # as the coordinator's one line. --debug streams it here too.
            "log_to_driver": debug,
        }
        if self.ray_address.strip():
            init_args["address"] = self.ray_address.strip()
        else:
            cpus = max(1, min(num_sites, os.cpu_count() or 1), math.ceil(self.node_cpus))
            init_args.update({"address": "local", "num_cpus": cpus,
                              "_temp_dir": str(ray_temp_dir()), "include_dashboard": False})
        return {
            "client_resources": {"num_cpus": self.node_cpus, "num_gpus": self.node_gpus},
            "init_args": init_args,
        }


def run_simulation(
    config: FederationConfig, debug: bool = False, resources: NodeResources | None = None
) -> Path:
    """Run ``config`` with one simulated node per site; return the run directory.

    ``resources``: where the nodes run (a Ray cluster) and what each reserves; by default a
    private Ray instance here, one CPU per node. A node's exception reaches the console as
    the coordinator's one line per failed node (``fedmed.server.recording``); Flower's
    tracebacks of it are shown only with ``debug``.
    """
    prepare_flower_environment()
    from flwr.simulation import run_simulation as flower_run_simulation

    from fedmed.clients.app import make_client_app
    from fedmed.server.app import default_run_dir, make_server_app

    sites = config.site_list(get_task(config.task).site_names())
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    overrides: dict[str, Any] = {**config.to_run_config(), "run-dir": str(run_dir.resolve())}
    backend_config = (resources or NodeResources()).backend_config(len(sites), debug)
    aborted = threading.Event()
    run_dir.mkdir(parents=True, exist_ok=True)
    with _messages_to_log(run_dir / LOG_FILE, debug), _restored_pythonpath(), \
            _abort_on_failure(aborted):
        flower_run_simulation(
            server_app=make_server_app(overrides, aborted),
            client_app=make_client_app(overrides),
            num_supernodes=len(sites),
            backend_config=backend_config,
        )
    if not (run_dir / "metrics.json").is_file():
        raise RuntimeError(f"the simulation ended without writing {run_dir / 'metrics.json'}")
    return run_dir


@contextlib.contextmanager
def _abort_on_failure(aborted: threading.Event) -> Iterator[None]:
    """If the engine fails, tell the coordinator thread to stop waiting for replies."""
    try:
        yield
    except BaseException:
        aborted.set()
        raise


@contextlib.contextmanager
def _restored_pythonpath() -> Iterator[None]:
    """Ray copies the driver's ``sys.path`` into ``PYTHONPATH`` for its workers; put the
    caller's value back so later subprocesses do not inherit the repository root."""
    before = os.environ.get("PYTHONPATH")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


class _DropTracebacks(logging.Filter):
    """The Simulation Engine logs a node's exception and its traceback at ERROR, and the
    ServerApp's too; fedmed reports each as one line (a failed node, a stopped run), so
    without ``--debug`` those records stay off the console (they are in the log file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Traceback (most recent call last)" in message
                    or "ClientAppException" in message)  # fmt: skip


def _log_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int,
    file: object = None, line: str | None = None,
) -> None:
    """``warnings.showwarning`` while a simulation runs: the warning as one record of the
    ``py.warnings`` logger instead of text on stderr."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    logging.getLogger(WARNINGS_LOGGER).warning("%s", text.rstrip())


@contextlib.contextmanager
def _messages_to_log(log_path: Path, debug: bool = False) -> Iterator[None]:
    """While the simulation runs, Flower's log and this process's warnings go to ``log_path``;
    the console keeps fedmed's progress lines and tables. Everything is put back afterwards.

    - Flower logs every message at INFO and warns "No fit_metrics_aggregation_fn provided"
      (fedmed aggregates its metrics itself): INFO and up go to the file, and Flower's console
      handler shows errors only, never the tracebacks of a failed node or ServerApp, which
      fedmed reports as one line each (:mod:`fedmed.server.recording`). Flower's logger stops
      propagating to the root logger: Opacus calls ``logging.basicConfig`` when imported, so
      every Flower line was printed a second time in another format.
    - Warnings (``warnings.showwarning``, restored by ``catch_warnings``; not
      ``logging.captureWarnings``, whose "off" would undo a host application's own capture):
      Ray warns at ``ray.init`` that a future version will stop hiding GPUs from tasks that
      ask for none (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO``). fedmed keeps that behaviour —
      simulated nodes get no GPU — so the variable is left alone and only the notice moves.

    With ``debug`` the console shows everything as well: Flower's INFO lines, tracebacks and
    the warnings.
    """
    from flwr.common.logger import console_handler  # Flower's own handler of its logger

    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    flower = logging.getLogger("flwr")
    warned = logging.getLogger(WARNINGS_LOGGER)
    saved = (flower.level, flower.propagate, warned.propagate, console_handler.level)
    # A library or earlier caller in this process may have disabled loggers (Flower's own
    # state migrations run alembic's ``fileConfig``, whose disable_existing_loggers switches
    # off every logger that exists; ``logging.disable``): the run's log must still be written.
    disabled = (flower.disabled, warned.disabled)
    ceiling = logging.root.manager.disable
    flower.disabled = warned.disabled = False
    logging.disable(logging.NOTSET)
    console_filter = _DropTracebacks()
    flower.setLevel(logging.INFO)
    flower.propagate = False
    warned.propagate = debug  # with --debug, also to the console through the root logger
    for logger in (flower, warned):
        logger.addHandler(handler)
    if not debug:
        console_handler.setLevel(logging.ERROR)
        console_handler.addFilter(console_filter)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warning
            yield
    finally:
        flower.setLevel(saved[0])
        flower.disabled, warned.disabled = disabled
        logging.disable(ceiling)
        flower.propagate, warned.propagate = saved[1], saved[2]
        console_handler.setLevel(saved[3])
        console_handler.removeFilter(console_filter)
        for logger in (flower, warned):
            logger.removeHandler(handler)
        handler.close()
