"""Private files of a site: written 0600 and atomically.

Files derived from patient data (admitted notes, cached image or note encodings) are kept in
the site home and must be unreadable to other local users and never seen half-written by a
concurrent reader. This module holds that one rule apart from the readers that need it, so a
pack can use it without importing the de-identification stage (an imaging-only node runs
without Presidio).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def _staging_path(path: Path) -> Path:
    """A hidden sibling of ``path``, unique to this process, to write before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def staged_private(path: Path) -> Iterator[tuple[TextIO, Path]]:
    """A new private (0600) text file that replaces ``path`` whole when the block ends
    without error (a concurrent reader sees the old file or the new one) and is removed
    otherwise."""
    staging = _staging_path(path)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out, staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def write_private(path: Path, content: str | bytes) -> None:
    """Write ``path`` with mode 0600, atomically (a concurrent reader sees old or new, whole)."""
    staging = _staging_path(path)
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    data = content.encode("utf-8") if isinstance(content, str) else content
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(staging, path)
