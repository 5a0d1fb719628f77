"""Plain-text notes of any length, de-identified in one forward pass in bounded memory.

Why: the gate holds a note, all its spans and its scrubbed copy at once, ~14 bytes per
character of a long note (``bench/deid_throughput.py --long-mb 1 10 --in-memory``;
docs/deid.md *Long notes*). ``fedmed deid scrub`` reads a plain-text note from a file and
writes it to one, so it need not hold it: it streams.

1. :func:`scan_text_file` reads the file once in chunks and makes :func:`fedmed.deid.io.
   read_text`'s checks (size, NUL byte, UTF-8, some text) with its messages, and measures
   what the gate's boundary check needs (characters, bytes, control characters) and the
   input digest;
2. :func:`settled_segments` reads it again, window by window
   (:meth:`fedmed.deid.presidio_engine.Detector.detect_windows`: the same windows, owners
   and spans as for the note in memory), merges the spans as they come
   (:func:`fedmed.deid.phi.merge_next`) and hands out each stretch of the note that no later
   window can change, with its spans;
3. :func:`scrub_stream` scrubs each stretch (:class:`fedmed.deid.surrogates.Scrubber`:
   surrogates are keyed functions of the value, so a name gets the same surrogate anywhere
   in the note without remembering it), writes it out and runs the residual check on it
   (:class:`fedmed.deid.residual.ResidualStream`).

What is held: a few windows of text (detection, and the stretch not yet written), the
spans of those windows and the findings of the residual check. The output is the
in-memory gate's, byte for byte (``tests/test_deid_streaming.py``).

A stretch ends where a window's ownership ends, or earlier: never inside a span, and never
where only spaces separate it from the span before (Presidio's anonymizer joins two spans of
one type with only spaces between, so the next window's span might have to join it; the
rule of :func:`fedmed.deid.surrogates._pieces`). Its end is then moved back before that span,
which waits for the next stretch.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from fedmed.deid.io import DEFAULT_MAX_BYTES, checked_size, not_utf8, refuse_binary
from fedmed.deid.notetext import NoteShape, Spill, SpilledText
from fedmed.deid.phi import Span, merge_next, merge_order
from fedmed.deid.records import CsvRecords, NoteRecord, csv_records, jsonl_notes
from fedmed.deid.residual import Finding, ResidualStream
from fedmed.deid.surrogates import Scrubber
from fedmed.errors import DataError

CHUNK_BYTES = 1 << 20
"""Bytes read from a note file at a time."""
_SPACES_ONLY = re.compile(r" *")


@dataclass
class TextScan:
    """A checked UTF-8 note file: its shape, where its text starts (after a byte-order mark)
    and the SHA-256 of its text's UTF-8 bytes (what the gate adds to the input digest)."""

    path: Path
    shape: NoteShape = field(default_factory=NoteShape)
    text_offset: int = 0
    sha256: bytes = b""


def scan_text_file(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> TextScan:
    """Check a plain-text note file in one chunked read, as :func:`fedmed.deid.io.read_text`
    would (same DataErrors: a NUL byte anywhere before a decoding error, as there)."""
    checked_size(path, max_bytes)
    scan = TextScan(Path(path))
    decoder = codecs.getincrementaldecoder("utf-8")()
    digest = hashlib.sha256()
    bad: DataError | None = None
    offset = fed = 0  # bytes of the file read; of its text (after a BOM) decoded
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            refuse_binary(path, chunk, offset)
            data = chunk
            if offset == 0 and chunk.startswith(codecs.BOM_UTF8):
                scan.text_offset = len(codecs.BOM_UTF8)
                data = chunk[scan.text_offset:]
            offset += len(chunk)
            if bad is None:  # after a decoding error keep looking for a NUL, as read_text
                bad = _decode(scan.shape, decoder, data, path, fed)
                digest.update(data)
            fed += len(data)
    bad = bad or _decode(scan.shape, decoder, b"", path, fed, final=True)
    if bad is not None:
        raise bad
    if not scan.shape.has_text:
        raise DataError(f"{path}: file has no text")
    scan.sha256 = digest.digest()
    return scan


def _decode(shape: NoteShape, decoder: codecs.IncrementalDecoder, data: bytes,
            path: str | Path, fed: int, final: bool = False) -> DataError | None:
    """Decode the next ``data`` (``fed`` text bytes came before) into ``shape``; the error
    naming the first byte that is not UTF-8, if any."""
    pending = len(decoder.getstate()[0])  # an incomplete character's bytes held back
    try:
        shape.update(decoder.decode(data, final=final))
    except UnicodeDecodeError as e:
        return not_utf8(path, e, fed - pending)
    return None


def text_chunks(scan: TextScan) -> Iterator[str]:
    """The text of a checked note file (:func:`scan_text_file`), or of a spilled note,
    decoded :data:`CHUNK_BYTES` at a time; DataError if it stopped being UTF-8 since."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(scan.path, "rb") as f:
        f.seek(scan.text_offset)
        while True:
            chunk = f.read(CHUNK_BYTES)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise DataError(f"{scan.path}: changed while it was read ({e.reason})") from e
            if text:
                yield text
            if not chunk:
                return


def spilled_scan(text: SpilledText) -> TextScan:
    """The scan of a note a record reader spilled (measured as it was written)."""
    if text.path is None or text.shape is None:
        raise ValueError("a spilled note without its file or shape")
    return TextScan(text.path, text.shape, 0, text.sha256)


class ForwardText:
    """``text[a:b]`` of a note read forward once from its chunks (:func:`text_chunks`),
    holding only what is still wanted: the characters from the start of the last detection
    window asked for, or from the first one not yet handed out (:meth:`release`), whichever
    is earlier."""

    def __init__(self, chunks: Iterator[str]) -> None:
        self._chunks = chunks
        self._text = ""
        self._start = 0  # offset of self._text in the note
        self._window = 0
        self._released = 0

    def window(self, a: int, b: int) -> str:
        """A detection window's text (``a`` never decreases)."""
        self._window = a
        self._drop()
        return self.text(a, b)

    def text(self, a: int, b: int) -> str:
        if a < self._start:
            raise ValueError(f"characters {a}-{self._start} were already dropped")
        while self._start + len(self._text) < b:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._text += chunk
        return self._text[a - self._start:b - self._start]

    def release(self, upto: int) -> None:
        """Characters before ``upto`` have been handed out."""
        self._released = upto
        self._drop()

    def _drop(self) -> None:
        keep = min(self._window, self._released)
        if keep > self._start:
            self._text = self._text[keep - self._start:]
            self._start = keep


def settled_segments(detector: Any, scan: TextScan) -> Iterator[tuple[int, str, list[Span]]]:
    """The note of ``scan`` as consecutive ``(start, text, spans)`` stretches, each with
    its merged spans (note offsets) and each final: no later window changes it (module
    docstring). Their spans together are ``detector.detect(whole note)``."""
    n = scan.shape.chars
    chunks = text_chunks(scan)
    text = ForwardText(chunks)
    merged: list[Span] = []  # merged spans not handed out yet, in order
    done = 0
    for settled, spans in detector.detect_windows(n, text.window):
        for span in sorted(spans, key=merge_order):
            merge_next(merged, span)
        cut = n if settled == n else _cut(merged, settled, text)  # n: the last window
        ready = [s for s in merged if s.end <= cut]
        del merged[:len(ready)]
        yield done, text.text(done, cut), ready
        text.release(cut)
        done = cut
    chunks.close()


RECORD_KINDS: dict[str, Literal["csv", "jsonl"]] = {".csv": "csv", ".jsonl": "jsonl"}
"""The note files read record by record (:func:`open_records`), by suffix."""


@dataclass
class RecordFile:
    """A CSV or JSONL file of notes, checked all through (:func:`open_records`) and read
    again, record by record, with :meth:`records`."""

    scan: TextScan
    kind: Literal["csv", "jsonl"]
    column: str
    count: int = 0
    header: list[str] = field(default_factory=list)

    def records(self, hold: int | None, spill: Spill | None) -> Iterator[NoteRecord]:
        """The file's records in order (:mod:`fedmed.deid.records`): each note held up to
        ``hold`` characters and spilled into ``spill`` past that."""
        where, chunks = str(self.scan.path), text_chunks(self.scan)
        if self.kind == "jsonl":
            return jsonl_notes(chunks, where, self.column, hold, spill)
        table: CsvRecords = csv_records(chunks, where, self.column, hold, spill)
        self.header = table.header
        return table.records


def open_records(path: str | Path, column: str, max_bytes: int = DEFAULT_MAX_BYTES,
                 hold: int | None = None) -> RecordFile:
    """A CSV or JSONL note file checked all through before any of its notes is admitted:
    :func:`scan_text_file`'s checks, then every record parsed, its note measured and not
    kept (so a malformed line near the end stops a run before hours of detection, with the
    readers' messages, as when the file was read whole); its records counted."""
    scan = scan_text_file(path, max_bytes)
    notes = RecordFile(scan, RECORD_KINDS[Path(path).suffix.lower()], column)
    notes.count = sum(1 for _ in notes.records(hold, Spill.checking()))
    return notes


@dataclass
class StreamedNote:
    """What the gate needs of a streamed note: PHI counts, the SHA-256 of what was written
    and the residual check's findings (offsets in the output)."""

    counts: Counter[str]
    released_sha256: bytes
    findings: list[Finding]


def scrub_stream(detector: Any, scrubber: Scrubber, scan: TextScan, patient_id: str,
                 out: IO[bytes]) -> StreamedNote:
    """Scrub the note of ``scan`` into ``out`` stretch by stretch (see the module
    docstring); the bytes written are those of the note scrubbed in memory."""
    counts: Counter[str] = Counter()
    digest = hashlib.sha256()
    residual = ResidualStream()
    written = 0
    for start, text, spans in settled_segments(detector, scan):
        counts.update(s.type for s in spans)
        result = scrubber.scrub(text, [Span(s.start - start, s.end - start, s.type, s.score)
                                       for s in spans], patient_id)
        data = result.text.encode("utf-8")
        out.write(data)
        digest.update(data)
        residual.feed(result.text, [Span(s.start + written, s.end + written, s.type)
                                    for s in result.replaced])
        written += len(result.text)
    return StreamedNote(counts, digest.digest(), residual.close())


def _cut(merged: list[Span], settled: int, text: ForwardText) -> int:
    """Where the stretch may end when every later span starts at ``settled`` or after."""
    cut = settled
    if merged and merged[-1].end > cut:  # a later span may still join it
        cut = merged[-1].start
    for span in reversed(merged):
        if span.end > cut:
            continue
        if not _SPACES_ONLY.fullmatch(text.text(span.end, cut)):
            break
        cut = span.start  # only spaces up to the cut: the next span might join it
    return cut
