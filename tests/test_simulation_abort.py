"""A Simulation Engine whose backend dies must fail the run, not hang the process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import fedmed.simulation
from fedmed.cli import main


def _lingering_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]


@pytest.mark.timeout(180)
def test_a_backend_that_cannot_start_fails_the_run_and_leaves_no_thread(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(_lingering_threads())
    too_long = tmp_path / ("x" * 90)  # Ray's socket paths under it exceed Linux's 107 bytes
    monkeypatch.setattr(fedmed.simulation, "ray_temp_dir", lambda: too_long)
    with pytest.raises(RuntimeError):
        main(["run", str(repo / "examples" / "heart"), "--rounds", "1",
              "--sites-home", str(tmp_path / "homes"), "--out", str(tmp_path / "run")])  # fmt: skip
    deadline = time.monotonic() + 30
    while set(_lingering_threads()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(_lingering_threads()) - before  # the coordinator thread stopped waiting
