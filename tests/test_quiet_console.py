"""A quiet console (issue 17 item 6), without a simulation: while a run is on, Flower's log
and Python warnings go to the run's log file; Flower's errors still reach the console, one
line each; ``--debug`` shows everything; the loggers are as before afterwards. The end to end
check (a heart federation's console and simulation.log) is in tests/test_spine_federation.py.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import warnings
from pathlib import Path

import pytest
from flwr.common.logger import console_handler, log

from fedmed.simulation import WARNINGS_LOGGER, _messages_to_log

RAY_NOTICE = "set RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0"


def _point_flower_at_this_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's console handler keeps the stderr it found when flwr was first imported (here
    pytest's collection-time capture): point it at the test's own, as the console is."""
    monkeypatch.setattr(console_handler, "stream", sys.stderr)


def _emit() -> None:
    """What a run's coordinator process says, in miniature."""
    log(logging.INFO, "[ROUND 1]")
    log(logging.WARNING, "No fit_metrics_aggregation_fn provided")
    warnings.warn(RAY_NOTICE, FutureWarning, stacklevel=1)
    log(logging.ERROR, "the Ray backend stopped")
    log(logging.ERROR, "Traceback (most recent call last):\n  File ...")


def _state() -> tuple[object, ...]:
    """Everything :func:`_messages_to_log` changes and must put back."""
    flower, warned = logging.getLogger("flwr"), logging.getLogger("py.warnings")
    return (flower.level, flower.propagate, tuple(flower.handlers), tuple(flower.filters),
            warned.propagate, tuple(warned.handlers), console_handler.level,
            tuple(console_handler.filters), warnings.showwarning)


def test_notices_go_to_the_log_file_and_errors_stay_on_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _point_flower_at_this_test(monkeypatch)
    before = _state()
    path = tmp_path / "simulation.log"
    with _messages_to_log(path):
        _emit()
    assert _state() == before
    shown = "".join(capsys.readouterr())
    lines = [line for line in shown.splitlines() if line.strip()]
    assert len(lines) == 1 and "the Ray backend stopped" in lines[0], shown  # a real error
    assert not caplog.records  # nothing reached the root logger (Opacus's console handler)
    text = path.read_text(encoding="utf-8")
    assert "INFO flwr: [ROUND 1]" in text and "WARNING flwr: No fit_metrics" in text
    assert f"WARNING py.warnings: {__file__}" in text and RAY_NOTICE in text
    assert "Traceback (most recent call last)" in text  # kept for whoever reads the file


def test_debug_shows_everything_on_the_console_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _point_flower_at_this_test(monkeypatch)
    path = tmp_path / "simulation.log"
    with _messages_to_log(path, debug=True):
        _emit()
    shown = "".join(capsys.readouterr())
    for message in ("[ROUND 1]", "No fit_metrics_aggregation_fn", "Traceback"):
        assert message in shown, shown
    # Flower's records do not reach the root logger (where Opacus's handler printed each a
    # second time); the warning does: it goes where the application's logging goes.
    assert [r.name for r in caplog.records] == ["py.warnings"]
    assert RAY_NOTICE in caplog.records[0].getMessage()
    assert RAY_NOTICE in path.read_text(encoding="utf-8")


def test_the_log_is_written_after_a_library_disabled_every_existing_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Flower's own state migrations run alembic's ``fileConfig`` in this process, which
    switches off every logger that exists (``disable_existing_loggers``): in the full suite
    the run's log lost Flower's lines and the warnings. The run re-enables both for its span
    and leaves them as it found them."""
    _point_flower_at_this_test(monkeypatch)
    for name in ("flwr", WARNINGS_LOGGER):
        monkeypatch.setattr(logging.getLogger(name), "disabled", logging.getLogger(name).disabled)
    logging.config.dictConfig({"version": 1})  # disable_existing_loggers defaults to True
    assert logging.getLogger("flwr").disabled and logging.getLogger(WARNINGS_LOGGER).disabled
    path = tmp_path / "simulation.log"
    with _messages_to_log(path):
        _emit()
    capsys.readouterr()
    text = path.read_text(encoding="utf-8")
    assert "INFO flwr: [ROUND 1]" in text and RAY_NOTICE in text
    assert logging.getLogger("flwr").disabled and logging.getLogger(WARNINGS_LOGGER).disabled
