"""Flower's object pulls made prompt (``fedmed.server.object_pulls``): the node wrapper and
the coordinator's ServerApp both use it; the deployed scenarios of
tests/test_deploy_loopback.py run through both."""

from __future__ import annotations

import types

import pytest
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError
from flwr.superlink.grid import http_grid
from flwr.supernode import start_client_internal

from fedmed.server.object_pulls import flower_pull_objects, prompt_object_pulls


def test_an_object_not_there_yet_is_asked_for_again_within_a_fraction_of_a_second() -> None:
    module = types.ModuleType("flower_part")
    module.pull_objects = flower_pull_objects  # type: ignore[attr-defined]
    prompt_object_pulls(module, pause=0.02)
    answers = iter([ObjectUnavailableError("x"), ObjectUnavailableError("x"), b"weights"])

    def pull(_object_id: str) -> bytes:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert module.pull_objects(["a"], pull) == {"a": b"weights"}  # type: ignore[attr-defined]
    waits = module.pull_objects.keywords  # type: ignore[attr-defined]
    # Flower's own backoff starts at 1 s and doubles to 10 s; here every retry waits 20 ms
    assert waits["initial_backoff"] == waits["backoff_cap"] == 0.02
    assert waits["max_tries_per_object"] is None  # Flower's overall PULL_MAX_TIME still bounds it


def test_both_flower_modules_fedmed_makes_prompt_still_use_flowers_puller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in (start_client_internal, http_grid):
        monkeypatch.setattr(module, "pull_objects", module.pull_objects)  # restored after
        prompt_object_pulls(module, pause=0.05)
        prompt_object_pulls(module, pause=0.03)  # again: the new pause, same function
        assert module.pull_objects.func is flower_pull_objects
        assert module.pull_objects.keywords["backoff_cap"] == 0.03


def test_a_flower_that_pulls_another_way_is_refused() -> None:
    module = types.ModuleType("flower_part")
    module.pull_objects = lambda *args: {}  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="not the one fedmed's prompt pulls were written for"):
        prompt_object_pulls(module)
