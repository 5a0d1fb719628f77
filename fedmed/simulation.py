"""Run a federation embedded, on Flower's Simulation Engine (Ray backend).

No service has to be running: ``flwr.simulation.run_simulation`` starts the
in-memory SuperLink and the Ray backend inside this process and stops both when
the ServerApp returns. Each simulated node is one site; it gets one CPU. Ray's
temporary files and Flower's home live in the fedmed state folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedmed.config import FederationConfig
from fedmed.state import prepare_flower_environment, ray_temp_dir
from fedmed.tasks import get_task


def run_simulation(config: FederationConfig, debug: bool = False) -> Path:
    """Run ``config`` with one simulated node per site; return the run directory.

    A node's exception reaches the console as the coordinator's one line per failed node
    (``fedmed.server.recording``); Flower's tracebacks of it are shown only with ``debug``.
    """
    prepare_flower_environment()
    from flwr.simulation import run_simulation as flower_run_simulation

    from fedmed.clients.app import make_client_app
    from fedmed.server.app import default_run_dir, make_server_app

    sites = config.site_list(get_task(config.task).site_names())
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    overrides: dict[str, Any] = {**config.to_run_config(), "run-dir": str(run_dir.resolve())}
    cpus = max(1, min(len(sites), os.cpu_count() or 1))
    backend_config: dict[str, Any] = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "_temp_dir": str(ray_temp_dir()),
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": True,
        },
    }
    aborted = threading.Event()
    with _quiet_flower(debug), _restored_pythonpath(), _abort_on_failure(aborted):
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


class _DropDeprecationNotice(logging.Filter):
    """Flower 1.42 marks the Python ``run_simulation`` entry point deprecated in favour of
    ``flwr run``; fedmed keeps it for the embedded default (no SuperLink daemon to stop)
    and says so in the README, so the notice is not repeated on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


class _DropTracebacks(logging.Filter):
    """The Simulation Engine logs a node's exception and its traceback at ERROR, and the
    ServerApp's too; fedmed reports each as one line (a failed node, a stopped run), so
    without ``--debug`` those records stay off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Traceback (most recent call last)" in message
                    or "ClientAppException" in message)  # fmt: skip


@contextlib.contextmanager
def _quiet_flower(debug: bool = False) -> Iterator[None]:
    """Flower logs every message at INFO; the coordinator prints its own progress."""
    logger = logging.getLogger("flwr")
    level = logger.level
    filters: list[logging.Filter] = [_DropDeprecationNotice()]
    if not debug:
        filters.append(_DropTracebacks())
    logger.setLevel(logging.WARNING)
    for log_filter in filters:
        logger.addFilter(log_filter)
    try:
        yield
    finally:
        logger.setLevel(level)
        for log_filter in filters:
            logger.removeFilter(log_filter)
