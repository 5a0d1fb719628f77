"""Write the small, flat TOML documents deployment needs (kit files, staged app config).

The standard library reads TOML (``tomllib``) but cannot write it; the documents
here are tables of scalars and string lists, so a few lines do, without a
dependency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

TomlScalar = bool | int | float | str
TomlValue = TomlScalar | Sequence[str]


def toml_value(value: TomlValue) -> str:
    """One value as TOML (strings use JSON escapes, which TOML basic strings accept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"


def toml_table(name: str, values: Mapping[str, TomlValue]) -> str:
    """``[name]`` and one ``key = value`` line per entry."""
    lines = [f"[{name}]"] + [f"{key} = {toml_value(v)}" for key, v in values.items()]
    return "\n".join(lines) + "\n"
