"""Shared test set-up: every test gets its own fedmed state folder (no writes to ./.fedmed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


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
