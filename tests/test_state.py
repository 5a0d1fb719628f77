"""The state folder: everything under it, even when Ray's socket paths need a short route."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmed.state import RAY_TEMP_MAX_CHARS, ray_temp_dir, state_root


def test_shallow_state_gives_ray_its_own_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMED_STATE", "/tmp/fm-s")
    assert ray_temp_dir() == Path("/tmp/fm-s/ray")


def test_deep_state_reaches_its_ray_folder_through_a_short_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("very-long-hospital-project-folder-name" * 2) / ".fedmed"
    monkeypatch.setenv("FEDMED_STATE", str(deep))
    link = ray_temp_dir()
    assert len(str(link)) <= RAY_TEMP_MAX_CHARS
    assert link.resolve() == (state_root() / "ray").resolve()
    (link / "probe").write_text("x")
    assert (deep / "ray" / "probe").read_text() == "x"  # the files live in the state folder
    assert ray_temp_dir() == link  # stable across calls
