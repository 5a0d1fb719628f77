"""Hypothesis profiles, mutation strategies and the one check of the parser fuzz tests.

Profiles (``FEDMED_FUZZ`` selects one; every profile is derandomised and keeps no example
database, so a run is the same on every machine and writes nothing to the repository):

- ``short`` (default, ``make test``): a few examples per parser, the module in well under
  a minute on two busy cores;
- ``long`` (``make fuzz``): ``FEDMED_FUZZ_EXAMPLES`` examples per parser (default 1000).

Mutations are structure-aware: they start from a valid file and flip bytes, truncate,
delete or repeat a range, insert garbage or telling tokens (NUL, ``nan``, ``1e309``, ``<!``),
and replace one number by nan/inf/huge/negative; JSON and TOML documents also get one
value replaced by a value of the wrong type or a non-finite/huge/negative number.
"""

from __future__ import annotations

import math
import os
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from fedmed.errors import FedmedError

PROFILE = os.environ.get("FEDMED_FUZZ", "short")
LONG_EXAMPLES = int(os.environ.get("FEDMED_FUZZ_EXAMPLES", "1000"))
_COMMON = dict(
    derandomize=True,
    database=None,
    deadline=None,  # wall time is checked per call below, with a margin for busy machines
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the autouse FEDMED_STATE fixture is harmless
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
settings.register_profile("fedmed-fuzz-short", max_examples=12, **_COMMON)
settings.register_profile("fedmed-fuzz-long", max_examples=LONG_EXAMPLES, **_COMMON)
if PROFILE not in ("short", "long"):
    raise ValueError(f"FEDMED_FUZZ must be 'short' or 'long', got {PROFILE!r}")
FUZZ = settings.get_profile(f"fedmed-fuzz-{PROFILE}")
"""The settings every fuzz test is decorated with."""

MAX_TRACED_BYTES = 128 * 1024 * 1024
"""Peak Python + numpy allocation of one call: the inputs are < 1 MB, so any claim in a
header (sample counts, image sizes, entity expansion) that is believed shows up here."""

T = TypeVar("T")

# ------------------------------------------------------------------ the one check


def parse_cleanly(call: Callable[[], T], *names: str | Path) -> T | FedmedError:
    """Run ``call``; return its result or the fedmed error it raised.

    Imports a reader makes on first use are traced too: import them beforehand. Fails the
    test on any other exception, on an error message that is not one line or names none of
    ``names`` (the file, or the folder, being read), or on a call that allocated more than
    :data:`MAX_TRACED_BYTES`. A hang is caught by pytest-timeout (``timeout`` in
    pyproject.toml); speed is measured in bench/, never asserted here.
    """
    tracemalloc.start()  # only around the call: tracing makes everything else ~3x slower
    try:
        outcome: T | FedmedError = call()
    except FedmedError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, f"multi-line error: {message!r}"
        assert any(str(name) in message for name in names), (
            f"error names none of {[str(n) for n in names]}: {message!r}"
        )
        outcome = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MAX_TRACED_BYTES, f"parser allocated {peak / 2**20:.0f} MiB"
    return outcome


# ------------------------------------------------------------------ byte mutations

TOKENS = (
    b"\x00", b"\xff\xfe", b"\xc3", b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e309",
    b"1e308", b"-1", b"-7", b"99", b"0", b"9" * 40, b"1" + b"0" * 400, b"\n", b"\r\n", b",",
    b'"', b"'", b"[", b"{", b"]]>", b"<!", b"&", b"?", b" ", b"\t", b"=", b"#",
)  # fmt: skip
NUMBERS = (
    "nan", "NaN", "inf", "-inf", "Infinity", "1e309", "1e308", "-1", "-7", "99", "0", "-0",
    "1" + "0" * 30, "9" * 400, "0.5", "", "x", "true", "4294967296", "-2147483649",
)  # fmt: skip
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@st.composite
def mutated(draw: st.DrawFn, seed: bytes, max_ops: int = 4) -> bytes:
    """``seed`` after 1..``max_ops`` random edits (see the module docstring)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(("flip", "truncate", "insert", "delete", "repeat", "number")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            junk = draw(st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=16)))
            data[at:at] = junk
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "repeat":
            chunk = bytes(data[at : at + draw(st.integers(1, 32))])
            data[at:at] = chunk * draw(st.integers(1, 8))
        elif op == "number":
            numbers = list(_NUMBER.finditer(bytes(data)))
            if numbers:
                match = draw(st.sampled_from(numbers))
                data[match.start() : match.end()] = draw(st.sampled_from(NUMBERS)).encode()
    return bytes(data)


def mutated_text(seed: str, max_ops: int = 4) -> st.SearchStrategy[bytes]:
    return mutated(seed.encode("utf-8"), max_ops)


# ------------------------------------------------------------------ JSON / TOML values

FLOATS = (math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, -1.0, 0.0, 2.0)
INTS = (0, -1, -(2**63), 2**63, 10**30, 10**400)


def weird_values(toml: bool = False) -> st.SearchStrategy[Any]:
    """Values of every JSON/TOML type, biased towards the numbers parsers get wrong."""
    scalars = st.one_of(
        st.sampled_from(FLOATS),
        st.sampled_from(INTS),
        st.booleans(),
        st.text(max_size=12),
        st.sampled_from(("", "*", "nan", "1e309", "\n", "rdp")),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(),
        *(() if toml else (st.none(),)),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
        ),
        max_leaves=6,
    )


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*prefix, index))
    return found


@st.composite
def mutated_document(draw: st.DrawFn, document: Any, toml: bool = False) -> Any:
    """``document`` (JSON-like) with one value replaced, one key deleted or one key added."""
    import copy

    result = copy.deepcopy(document)
    path = draw(st.sampled_from(_paths(result)[1:]))
    parent = result
    for key in path[:-1]:
        parent = parent[key]
    op = draw(st.sampled_from(("replace", "replace", "delete", "add")))
    if op == "replace":
        parent[path[-1]] = draw(weird_values(toml))
    elif op == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=8))] = draw(weird_values(toml))
    else:
        parent.append(draw(weird_values(toml)))
    return result


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path
