"""A note's text held in memory, or spilled to a private file when it is too long to hold.

Why: a note inside a JSONL line or a CSV cell is one field of a record, and the record readers
(:mod:`fedmed.deid.records`) decode it a piece at a time. A field up to ``hold`` characters
(the gate's ``deid.window_chars``: one detection window) is kept as a ``str``; a longer one is
written, as it is decoded, to a file of a :class:`Spill` folder (0700, files 0600: it is raw
PHI) and stands as a :class:`SpilledText`, which the gate scrubs from the file window by
window (:mod:`fedmed.deid.stream`) like a plain-text note. So memory holds at most a window's
worth of any note, whatever its length.

:class:`NoteShape` (what the gate's boundary check reads of a note) is measured here while a
spilled text is written, so the gate needs no extra pass over it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from fedmed.deid.phi import Document

CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f]")
"""Control characters other than tab, line feed, form feed and carriage return."""
PIECE_CHARS = 1 << 16
"""Characters read back from a spilled text at a time."""


@dataclass
class NoteShape:
    """What the gate's boundary check reads of a note, counted chunk by chunk."""

    chars: int = 0
    utf8_bytes: int = 0
    control: int = 0
    has_text: bool = False
    has_nul: bool = False

    @classmethod
    def of(cls, text: str) -> NoteShape:
        shape = cls()
        shape.update(text)
        return shape

    def update(self, chunk: str) -> None:
        self.chars += len(chunk)
        self.utf8_bytes += len(chunk.encode("utf-8"))
        self.control += sum(1 for _ in CONTROL.finditer(chunk))
        self.has_text = self.has_text or bool(chunk.strip())
        self.has_nul = self.has_nul or "\x00" in chunk


@dataclass(frozen=True)
class SpilledText:
    """A note's text in a private UTF-8 file (no byte-order mark).

    ``shape`` and ``sha256`` (of the UTF-8 bytes): measured while a reader wrote it, for the
    gate's boundary check and input digest; None for a scrubbed copy the gate wrote, which
    is only read back. ``path`` is None for a text a checking pass measured and did not keep
    (:meth:`Spill.checking`)."""

    path: Path | None
    shape: NoteShape | None = None
    sha256: bytes = b""


NoteText = str | SpilledText
"""A note's text: held, or in a file."""


@dataclass
class Note:
    """One note to admit: its document (id and meta; the text too when held), its text, and
    why it cannot be admitted when a reader could not hold a field of its record (``problem``:
    the gate quarantines it with that reason)."""

    doc: Document
    text: NoteText
    problem: str | None = None
    fields: dict[str, object] = field(default_factory=dict)
    """The record the note came from (a reader's, for writing it back; text not included)."""


def text_pieces(text: NoteText, chars: int = PIECE_CHARS) -> Iterator[str]:
    """The text in order: a held one whole, a spilled one ``chars`` characters at a time."""
    if isinstance(text, str):
        if text:
            yield text
        return
    if text.path is None:
        raise ValueError("a text measured by a checking pass was not kept")
    with open(text.path, encoding="utf-8", newline="") as f:
        while piece := f.read(chars):
            yield piece


def discard(text: NoteText) -> None:
    """Delete a spilled text's file now (a long note's raw copy is not kept past its use)."""
    if isinstance(text, SpilledText) and text.path is not None:
        text.path.unlink(missing_ok=True)


class SpillWriter:
    """Writes one spilled text, measuring its shape and digest as it goes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.shape = NoteShape()
        self._digest = hashlib.sha256()
        self._file: IO[bytes] | None = None
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb")

    def write(self, piece: str) -> None:
        data = piece.encode("utf-8")
        self.shape.update(piece)
        self._digest.update(data)
        if self._file is not None:
            self._file.write(data)

    def close(self) -> SpilledText:
        if self._file is not None:
            self._file.close()
        return SpilledText(self.path, self.shape, self._digest.digest())


class Spill:
    """A private folder (0700) for the spilled texts of one file's notes and their scrubbed
    copies, removed with everything in it when closed (a ``with`` block).

    ``parent``: where to make it — the site home's ``deid/spill`` for the gate (raw notes stay
    in the site home, beside its quarantine), the system's temporary folder when None.
    A checking spill (:meth:`checking`) writes nothing: its texts are only measured."""

    def __init__(self, parent: Path | None = None, keep: bool = True) -> None:
        self.folder: Path | None = None
        if keep:
            if parent is not None:
                parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.folder = Path(tempfile.mkdtemp(prefix="spill-", dir=parent))  # mode 0700
        self._count = 0

    @classmethod
    def checking(cls) -> Spill:
        """A spill for a pass that checks a file's records and needs none of their texts."""
        return cls(keep=False)

    def new_path(self) -> Path:
        """A fresh file name in the folder (for a scrubbed copy)."""
        if self.folder is None:
            raise ValueError("a checking spill keeps no files")
        self._count += 1
        return self.folder / f"{self._count:06d}.txt"

    def writer(self) -> SpillWriter:
        return SpillWriter(self.new_path() if self.folder is not None else None)

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class TextSink:
    """Collects one note's text as a reader decodes it: held up to ``hold`` characters, then
    spilled (``hold`` None: always held, the in-memory readers)."""

    def __init__(self, hold: int | None, spill: Spill | None) -> None:
        self._hold = hold
        self._spill = spill
        self._parts: list[str] = []
        self._chars = 0
        self._writer: SpillWriter | None = None

    def add(self, piece: str) -> None:
        if self._writer is not None:
            self._writer.write(piece)
            return
        self._parts.append(piece)
        self._chars += len(piece)
        if self._hold is not None and self._spill is not None and self._chars > self._hold:
            self._writer = self._spill.writer()
            for part in self._parts:
                self._writer.write(part)
            self._parts = []

    def close(self) -> NoteText:
        if self._writer is not None:
            return self._writer.close()
        return "".join(self._parts)


def note_groups(notes: Iterable[Note], max_notes: int, max_chars: int
                ) -> Iterator[list[Note]]:
    """The notes in order, in groups for detection: held ones together (up to ``max_notes``
    notes or the group that reaches ``max_chars`` characters: a batch the detector's
    workers take, held at once), each spilled note and each note with a problem alone."""
    group: list[Note] = []
    chars = 0
    for note in notes:
        if isinstance(note.text, str) and note.problem is None:
            group.append(note)
            chars += len(note.text)
            if len(group) >= max_notes or chars >= max_chars:
                yield group
                group, chars = [], 0
            continue
        if group:
            yield group
            group, chars = [], 0
        yield [note]
    if group:
        yield group
