"""Shared test set-up: every test gets its own fedmed state folder (no writes to ./.fedmed)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
