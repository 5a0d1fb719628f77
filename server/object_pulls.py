"""Flower's object pulls asked again within a fraction of a second, not after 1 s, 2 s, 4 s.

Why (docs/operator-guide.md § 10): a Flower 1.42 message travels as metadata first and its
objects (the model's weights) after. The coordinator's grid registers a message with the
SuperLink and only then uploads its objects; a SuperNode that polls often therefore gets
the message before its weights and meets "not available yet" — and Flower's
``pull_objects`` answers that with a backoff starting at 1 s (``PULL_INITIAL_BACKOFF``),
doubling to 10 s. The same happens to the coordinator pulling a reply whose objects are
still on their way. Measured on loopback, the node-side wait was ~1.3 s of a 2.5 s plain
round. The objects are normally a few milliseconds away, so asking again every
``pause`` seconds costs a handful of small requests and saves most of that second.

This swaps the ``pull_objects`` name one Flower module uses for Flower's own function
with a short backoff. Flower's overall limit on a pull (``PULL_MAX_TIME``) still bounds
the wait; the per-object try limit, which Flower sized for its long backoff, is left out
so a short pause does not give up sooner than Flower would. If the name is missing or is
not Flower's function, this refuses rather than leave the timing silently different.
"""

from __future__ import annotations

import functools
from types import ModuleType

from flwr.supercore.inflatable.inflatable_utils import pull_objects as flower_pull_objects

DEFAULT_PAUSE_SECONDS = 0.05


def prompt_object_pulls(module: ModuleType, pause: float = DEFAULT_PAUSE_SECONDS) -> None:
    """Make ``module``'s ``pull_objects`` ask again every ``pause`` seconds at most."""
    current = getattr(module, "pull_objects", None)
    if isinstance(current, functools.partial):
        current = current.func  # already made prompt: set the new pause
    if current is not flower_pull_objects:
        raise RuntimeError(
            f"{module.__name__} no longer pulls objects with Flower's pull_objects: this "
            "Flower version is not the one fedmed's prompt pulls were written for"
        )
    module.pull_objects = functools.partial(  # type: ignore[attr-defined]
        flower_pull_objects, initial_backoff=pause, backoff_cap=pause,
        max_tries_per_object=None,
    )  # fmt: skip
