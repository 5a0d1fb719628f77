"""Shared test set-up: every test gets its own fedmed state folder (no writes to ./.fedmed)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXED_SITE_SECRET = "5e" * 32  # tests only: a real site's secret is random (deid.sitekey)


def _with_fixed_secret(home: Path) -> Path:
    key = home / "deid" / "site_secret.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(FIXED_SITE_SECRET + "\n")
    return home


@pytest.fixture(scope="session")
def seeded_gate_home() -> Callable[[Path], Path]:
    """Gives a gate home a fixed de-id site secret, so the gate's surrogates — and so the
    released notes a test trains on — are the same in every run (a fresh secret changes
    them, and with them whether a short training run crosses a threshold)."""
    return _with_fixed_secret


@pytest.fixture(autouse=True)
def isolated_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Point FEDMED_STATE (Flower home, Ray temp, site homes, runs) at a fresh folder."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("FEDMED_STATE", str(state))
    monkeypatch.setenv("FLWR_HOME", str(state / "flwr"))
    return state


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread() -> Iterator[None]:
    """The test models are tiny: two intra-op torch threads on a shared 2-core machine run
    them up to ~10x slower. (Simulated nodes are separate Ray processes, unaffected.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
