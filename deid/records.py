"""JSONL and CSV note files read one record at a time, a long note's text a piece at a time.

Why: ``pandas.read_csv`` and ``json.loads`` of a line hold a whole file or a whole line, so a
50 MB note inside a JSONL or CSV file was held whole, with its spans and scrubbed copy (~14
bytes a character: docs/deid.md *Long notes*). These readers take the file's text as an
iterator of chunks (:func:`fedmed.deid.stream.text_chunks` reads them from the file; the
in-memory readers of :mod:`fedmed.deid.io` pass the whole text as one) and hand out one
:class:`NoteRecord` at a time. The note's field is decoded into a
:class:`fedmed.deid.notetext.TextSink`: held up to ``hold`` characters, spilled to a private
file past that. Every other field is held up to ``hold`` characters too; a longer one is not
read (its record gets a ``problem``, which the gate quarantines with the reason).

* **JSONL**: a line of up to ``hold`` characters is parsed by ``json.loads``; a longer one by
  a small forward parser of one JSON object whose string values are decoded in pieces, each
  by ``json.loads`` (cut between escapes, never inside a surrogate pair), so the values are
  those of ``json.loads`` of the line. Lines end at ``\\n`` only (JSON Lines; a note with a
  raw U+2028 or NEL is one line).
* **CSV**: the ``csv`` module's excel dialect (RFC 4180 quoting, ``""`` for a quote, a quoted
  field spans lines), as ``pandas.read_csv`` read these files before: the first record is
  the header (repeated names made unique as pandas does, ``a``, ``a.1``), blank and
  whitespace-only lines are skipped, a short row is padded with empty fields; a row with
  more fields than the header and a quote left open at the end are errors.

The writers put a record back in kind: :func:`json_pieces` is ``json.dumps`` with one string
value streamed from its file, :class:`CsvWriter` the ``csv`` writer (what ``pandas.to_csv``
uses) with a long field streamed; held notes give the same bytes as before.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedmed.deid.notetext import Note, NoteText, Spill, SpilledText, TextSink, text_pieces
from fedmed.deid.phi import Document
from fedmed.errors import DataError

# ---------------------------------------------------------------- shared


@dataclass
class NoteRecord:
    """One record of a note file: its number (0-based, blank lines not counted), the line it
    starts on (1-based), its fields in order (the note's field ``key`` holds a held ``str``
    or a :class:`SpilledText`), and what could not be held, if anything."""

    number: int
    line: int
    fields: dict[str, Any]
    key: str
    problem: str | None = None

    @property
    def text(self) -> Any:
        return self.fields.get(self.key)

    def note(self, source: Path) -> Note:
        """The record as a note to admit: id ``<file stem>-<number>``, the record's place and
        its ``patient_id`` field (when set) in ``meta``, its fields kept for writing back; a
        problem names the line (the quarantine's reason file names the file by the id)."""
        text = self.text
        patient = self.fields.get("patient_id")
        meta = {"source": str(source), "row": self.number,
                **({"patient_id": str(patient)} if patient else {})}
        doc = Document(f"{source.stem}-{self.number}", text if isinstance(text, str) else "",
                       meta=meta)
        problem = None if self.problem is None else f"line {self.line}: {self.problem}"
        return Note(doc, text, problem, self.fields)


class _Chars:
    """Text read forward from chunks: ``buf[pos:]`` is what is not consumed yet."""

    def __init__(self, chunks: Iterable[str]) -> None:
        self._chunks = iter(chunks)
        self.buf = ""
        self.pos = 0
        self.line = 1

    def more(self) -> bool:
        """Read the next chunk, dropping what was consumed; False at the end of the text."""
        for chunk in self._chunks:
            if chunk:
                self.buf = self.buf[self.pos:] + chunk
                self.pos = 0
                return True
        return False

    def ahead(self, n: int = 1) -> bool:
        """Whether ``n`` characters are left (reading on as needed)."""
        while len(self.buf) - self.pos < n:
            if not self.more():
                return False
        return True

    def peek(self) -> str:
        return self.buf[self.pos] if self.ahead() else ""


class _Field:
    """A field other than the note's: held up to ``limit`` characters, then only counted."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self.chars = 0
        self.decoded = True  # False: raw JSON text, to be parsed

    def add(self, piece: str) -> None:
        self.chars += len(piece)
        if self._limit is None or self.chars <= self._limit:
            self._parts.append(piece)
        else:
            self._parts = []

    def skip(self, chars: int) -> None:
        """Count ``chars`` characters that were not kept."""
        self.chars += chars
        if self.over:
            self._parts = []

    @property
    def over(self) -> bool:
        return self._limit is not None and self.chars > self._limit

    def close(self) -> str | None:
        return None if self.over else "".join(self._parts)


def _too_long(name: str, hold: int | None) -> str:
    return (f"field {name!r} is longer than {hold:,} characters (deid.window_chars), more "
            "than a record's fields other than its note are read into memory")


# ---------------------------------------------------------------- JSONL


class JsonLineError(DataError):
    """A JSONL line that is not JSON (``reason``) or not a JSON object (``reason`` None)."""

    def __init__(self, where: str, line: int, reason: str | None, key: str) -> None:
        self.where, self.line, self.reason = where, line, reason
        super().__init__(f"{where}: line {line} has no string field {key!r}" if reason is None
                         else f"{where}: line {line} is not JSON ({reason})")


_JSON_WS = re.compile(r"[ \t\r]*")
_JSON_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')
_JSON_ESCAPE = re.compile(r'\\(?:u[0-9a-fA-F]{4}|["\\/bfnrt])')
_JSON_HIGH = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_JSON_SCALAR_CHARS = re.compile(r"[-+.0-9A-Za-z]*")
_JSON_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|NaN"
                          r"|-?Infinity")
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _AFTER = range(6)
_MAX_DEPTH = 1_000  # json.loads's recursion stops about there
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_PIECE = 1 << 16
_UNPAIRED = "field {!r} holds an unpaired surrogate escape, not text"


def jsonl_records(chunks: Iterable[str], where: str, key: str, hold: int | None = None,
                  spill: Spill | None = None) -> Iterator[NoteRecord]:
    """The records of a JSON Lines text, in order (blank lines skipped); see the module
    docstring. :class:`JsonLineError` for a line that is not a JSON object; the caller
    checks the fields. ``hold`` None holds every field (the in-memory reader)."""
    chars = _Chars(chunks)
    number = 0
    while chars.ahead():
        line = chars.line
        end = _line_end(chars, hold)
        parse = _JsonLine(chars, where, line, key, hold, spill)
        if end >= 0:
            text = chars.buf[chars.pos:end]
            chars.pos = min(end + 1, len(chars.buf))
            fields = parse.whole(text) if text.strip() else None
        else:
            fields = parse.streamed()
        chars.line += 1
        if fields is None:
            continue
        text_value = fields.get(key)
        if isinstance(text_value, str) and _SURROGATE.search(text_value):
            raise parse.fail(_UNPAIRED.format(key))
        yield NoteRecord(number, line, fields, key, parse.problem)
        number += 1


def jsonl_notes(chunks: Iterable[str], where: str, key: str, hold: int | None = None,
                spill: Spill | None = None) -> Iterator[NoteRecord]:
    """:func:`jsonl_records` of a file of notes: every record has a string ``key``
    (:class:`JsonLineError` naming the line otherwise) and there is at least one."""
    count = 0
    for record in jsonl_records(chunks, where, key, hold, spill):
        if not isinstance(record.text, str | SpilledText):
            raise JsonLineError(where, record.line, None, key)
        count += 1
        yield record
    if not count:
        raise DataError(f"{where}: no records")


def _line_end(chars: _Chars, limit: int | None) -> int:
    """Where the line at ``chars.pos`` ends (its ``\\n``, or the end of the text), when it is
    at most ``limit`` characters long; -1 when it is longer."""
    searched = chars.pos
    while True:
        end = chars.buf.find("\n", searched)
        if end >= 0:
            return end if limit is None or end - chars.pos <= limit else -1
        if limit is not None and len(chars.buf) - chars.pos > limit:
            return -1
        searched = len(chars.buf) - chars.pos
        if not chars.more():
            return len(chars.buf)


class _JsonLine:
    """One JSONL line: parsed whole, or forward in pieces (a line over ``hold``)."""

    def __init__(self, chars: _Chars, where: str, line: int, key: str, hold: int | None,
                 spill: Spill | None) -> None:
        self.chars, self.where, self.line, self.key = chars, where, line, key
        self.hold, self.spill = hold, spill
        self.problem: str | None = None

    def fail(self, reason: str | None) -> JsonLineError:
        return JsonLineError(self.where, self.line, reason, self.key)

    def loads(self, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise self.fail(e.msg) from None
        except RecursionError:  # arrays or objects nested deeper than ~1000 levels
            raise self.fail("nested too deeply to be a note") from None

    def whole(self, text: str) -> dict[str, Any]:
        record = self.loads(text)
        if not isinstance(record, dict):
            raise self.fail(None)
        return record

    def streamed(self) -> dict[str, Any] | None:
        """The object of a line too long to parse whole, its strings decoded in pieces;
        None for a blank line."""
        chars = self.chars
        self._space()
        if chars.peek() in ("\n", ""):
            chars.pos += chars.peek() == "\n"
            return None
        self._expect("{", None)
        fields: dict[str, Any] = {}
        self._space()
        if chars.peek() == "}":
            chars.pos += 1
        else:
            while True:
                self._space()
                self._expect('"', "Expecting property name enclosed in double quotes")
                name = self._string(_Field(self.hold)).close()
                if name is None:
                    raise self.fail(f"a property name longer than {self.hold:,} characters")
                self._space()
                self._expect(":", "Expecting ':' delimiter")
                self._space()
                fields[name] = self._value(name)
                self._space()
                if chars.peek() == "}":
                    chars.pos += 1
                    break
                self._expect(",", "Expecting ',' delimiter")
        self._space()
        if chars.peek() not in ("\n", ""):
            raise self.fail("Extra data")
        chars.pos += chars.peek() == "\n"
        return fields

    def _value(self, name: str) -> Any:
        """The value of field ``name``: the note's text into a :class:`TextSink`, any other
        value held up to ``hold`` characters (None, and a ``problem``, past that)."""
        if self.chars.peek() == '"':
            self.chars.pos += 1
            if name == self.key:
                return self._string(TextSink(self.hold, self.spill)).close()
            value = self._string(_Field(self.hold))
        else:
            value = self._other(_Field(self.hold))
        if value.over:
            self.problem = self.problem or _too_long(name, self.hold)
            return None
        text = value.close() or ""
        return text if value.decoded else self.loads(text)

    def _string(self, sink: Any) -> Any:
        """Decode the JSON string after its opening quote into ``sink``."""
        for raw in self._raw_string():
            piece = self.loads(f'"{raw}"')
            if isinstance(sink, TextSink) and _SURROGATE.search(piece):
                raise self.fail(_UNPAIRED.format(self.key))
            sink.add(piece)
        return sink

    def _raw_string(self) -> Iterator[str]:
        """The JSON string's raw text up to its closing quote (consumed), in pieces that
        ``json.loads`` decodes alone: cut between escapes, never after a high surrogate."""
        chars = self.chars
        parts: list[str] = []
        size = 0
        while True:
            if not chars.ahead(12) and not chars.ahead():
                raise self.fail("Unterminated string starting at")
            buf, pos = chars.buf, chars.pos
            c = buf[pos]
            cut = True
            if c == '"':
                chars.pos = pos + 1
                if parts:
                    yield "".join(parts)
                return
            if c == "\\":
                match = _JSON_ESCAPE.match(buf, pos)
                if match is None:
                    raise self.fail("Invalid \\uXXXX escape" if buf[pos + 1:pos + 2] == "u"
                                    else "Invalid \\escape")
                token = match.group()
                cut = not _JSON_HIGH.fullmatch(token)
            elif c < " ":
                raise self.fail("Unterminated string starting at" if c == "\n"
                                else "Invalid control character at")
            else:
                token = _JSON_PLAIN.match(buf, pos).group()  # type: ignore[union-attr]
            chars.pos = pos + len(token)
            parts.append(token)
            size += len(token)
            if cut and size >= _JSON_PIECE:
                yield "".join(parts)
                parts, size = [], 0

    def _other(self, value: _Field) -> _Field:
        """A value that is not the note's text into ``value`` as raw JSON (``json.loads``
        builds it when it is held), checked against JSON's grammar as it is read, so a
        malformed value too long to hold is an error, as in a line read whole."""
        value.decoded = False
        chars = self.chars
        stack: list[str] = []  # the open arrays and objects
        state = _VALUE
        while True:
            if state == _AFTER and not stack:
                return value
            self._space()
            c = chars.peek()
            if state == _COLON:
                self._expect(":", "Expecting ':' delimiter")
                value.add(":")
                state = _VALUE
            elif state == _AFTER:
                if c == ",":
                    state = _VALUE if stack[-1] == "[" else _KEY
                elif c == ("]" if stack[-1] == "[" else "}"):
                    stack.pop()
                else:
                    raise self.fail("Expecting ',' delimiter")
                value.add(c)
                chars.pos += 1
            elif c in "]}" and c and state in (_VALUE_OR_CLOSE, _KEY_OR_CLOSE) and \
                    c == ("]" if state == _VALUE_OR_CLOSE else "}"):
                stack.pop()
                value.add(c)
                chars.pos += 1
                state = _AFTER
            elif state in (_KEY, _KEY_OR_CLOSE):
                self._expect('"', "Expecting property name enclosed in double quotes")
                self._raw(value)
                state = _COLON
            elif c == '"':
                chars.pos += 1
                self._raw(value)
                state = _AFTER
            elif c in ("[", "{"):
                if len(stack) >= _MAX_DEPTH:
                    raise self.fail("nested too deeply to be a note")
                stack.append(c)
                value.add(c)
                chars.pos += 1
                state = _VALUE_OR_CLOSE if c == "[" else _KEY_OR_CLOSE
            else:
                token = _Field(self.hold)
                while chars.ahead():
                    match = _JSON_SCALAR_CHARS.match(chars.buf, chars.pos)
                    if not match.group():  # type: ignore[union-attr]
                        break
                    token.add(match.group())  # type: ignore[union-attr]
                    chars.pos = match.end()  # type: ignore[union-attr]
                text = token.close()
                if text is not None and not _JSON_SCALAR.fullmatch(text):
                    raise self.fail("Expecting value")
                if text is None:
                    value.skip(token.chars)
                else:
                    value.add(text)
                state = _AFTER

    def _raw(self, value: _Field) -> None:
        """A string's raw text, after its opening quote, into ``value`` (quotes and all)."""
        value.add('"')
        for raw in self._raw_string():
            value.add(raw)
        value.add('"')

    def _space(self) -> None:
        chars = self.chars
        while chars.ahead():
            end = _JSON_WS.match(chars.buf, chars.pos).end()  # type: ignore[union-attr]
            if end < len(chars.buf):
                chars.pos = end
                return
            chars.pos = end

    def _expect(self, c: str, reason: str | None) -> None:
        if self.chars.peek() != c:
            raise self.fail(reason)
        self.chars.pos += 1


# ---------------------------------------------------------------- CSV

_CSV_PLAIN = re.compile(r"[^,\r\n]+")
_START, _PLAIN, _QUOTED, _AFTER_QUOTE = range(4)


@dataclass
class CsvRecords:
    """A CSV text's header (made unique as pandas does) and its records, read on demand."""

    header: list[str]
    records: Iterator[NoteRecord] = field(repr=False)


def csv_records(chunks: Iterable[str], where: str, column: str, hold: int | None = None,
                spill: Spill | None = None) -> CsvRecords:
    """The header of a CSV text (read now: DataError when it has none or no ``column``) and
    its records, in order; see the module docstring."""
    chars = _Chars(chunks)
    first = _csv_record(chars, where, lambda _: _Field(hold))
    if first is None:
        raise DataError(f"{where}: malformed CSV (No columns to parse from file)")
    names, _ = first
    if any(name is None for name in names):
        raise DataError(f"{where}: malformed CSV (a column name is longer than {hold:,} "
                        "characters)")
    header = _unique([str(name) for name in names])
    if column not in header:
        raise DataError(f"{where}: no column {column!r} (columns: {header})")
    return CsvRecords(header, _csv_rows(chars, where, header, column, hold, spill))


def _csv_rows(chars: _Chars, where: str, header: list[str], column: str, hold: int | None,
              spill: Spill | None) -> Iterator[NoteRecord]:
    at = header.index(column)
    number = 0
    while True:
        found = _csv_record(chars, where,
                            lambda index: TextSink(hold, spill) if index == at else _Field(hold))
        if found is None:
            return
        values, line = found
        if len(values) > len(header):
            raise DataError(f"{where}: malformed CSV (Expected {len(header)} fields in line "
                            f"{line}, saw {len(values)})")
        values += [""] * (len(header) - len(values))
        over = [name for name, value in zip(header, values, strict=True) if value is None]
        problem = _too_long(over[0], hold) if over else None
        yield NoteRecord(number, line, dict(zip(header, values, strict=True)), column, problem)
        number += 1


def _csv_record(chars: _Chars, where: str, sink: Callable[[int], TextSink | _Field]
                ) -> tuple[list[Any], int] | None:
    """The next record's fields, each read into ``sink(index)``, and the line it starts on;
    None at the end of the text. Blank and whitespace-only lines are skipped (pandas)."""
    while True:
        while chars.peek() in ("\r", "\n"):
            _line_break(chars)
        if not chars.ahead():
            return None
        line = chars.line
        fields: list[Any] = []
        current = sink(0)
        state, blank = _START, True  # blank: nothing but spaces and tabs, unquoted
        while True:
            if not chars.ahead():
                if state == _QUOTED:
                    raise DataError(f"{where}: malformed CSV (EOF inside string starting at "
                                    f"line {line})")
                fields.append(current.close())
                break
            buf, pos = chars.buf, chars.pos
            c = buf[pos]
            if state == _QUOTED:
                end = buf.find('"', pos)
                piece = buf[pos:end if end >= 0 else len(buf)]
                if piece:
                    current.add(piece)
                    chars.line += piece.count("\n")
                chars.pos = pos + len(piece) + (end >= 0)
                state = _AFTER_QUOTE if end >= 0 else _QUOTED
                continue
            if state == _START and c == '"':
                chars.pos += 1
                state, blank = _QUOTED, False
                continue
            if state == _AFTER_QUOTE and c == '"':
                current.add('"')
                chars.pos += 1
                state = _QUOTED
                continue
            if c == ",":
                blank = False
                fields.append(current.close())
                current = sink(len(fields))
                chars.pos += 1
                state = _START
                continue
            if c in "\r\n":
                fields.append(current.close())
                _line_break(chars)
                break
            match = _CSV_PLAIN.match(buf, pos)  # not a quote opening a field: kept as is
            piece = match.group()  # type: ignore[union-attr]
            current.add(piece)
            blank = blank and not piece.strip(" \t")
            chars.pos = match.end()  # type: ignore[union-attr]
            state = _PLAIN
        if not blank:
            return fields, line


def _line_break(chars: _Chars) -> None:
    """Consume one line break: ``\\r\\n``, ``\\r`` or ``\\n``."""
    crlf = chars.buf[chars.pos] == "\r" and chars.ahead(2) and chars.buf[chars.pos + 1] == "\n"
    chars.pos += 1 + crlf
    chars.line += 1


def _unique(names: list[str]) -> list[str]:
    """Repeated column names made unique as ``pandas.read_csv`` does: ``a``, ``a.1``, ..."""
    counts: dict[str, int] = {}
    out = []
    for name in names:
        count = counts.get(name, 0)
        while count > 0:
            counts[name] = count + 1
            name = f"{name}.{count}"
            count = counts.get(name, 0)
        out.append(name)
        counts[name] = count + 1
    return out


# ---------------------------------------------------------------- writers


def json_pieces(value: dict[str, Any] | list[Any], at: str | int, text: NoteText,
                ensure_ascii: bool = True) -> Iterator[str]:
    """``json.dumps(value)`` with ``value[at]`` set to ``text``, in pieces: a spilled text is
    read from its file and escaped a piece at a time (JSON escapes one character at a time,
    so the pieces join to the escaped whole)."""
    if isinstance(text, str):
        whole: Any = dict(value) if isinstance(value, dict) else list(value)
        whole[at] = text
        yield json.dumps(whole, ensure_ascii=ensure_ascii)
        return
    items = value.items() if isinstance(value, dict) else enumerate(value)
    yield "{" if isinstance(value, dict) else "["
    for n, (k, v) in enumerate(items):
        yield ", " if n else ""
        if isinstance(value, dict):
            yield json.dumps(k, ensure_ascii=ensure_ascii) + ": "
        if k != at:
            yield json.dumps(v, ensure_ascii=ensure_ascii)
            continue
        yield '"'
        for piece in text_pieces(text):
            yield json.dumps(piece, ensure_ascii=ensure_ascii)[1:-1]
        yield '"'
    yield "}" if isinstance(value, dict) else "]"


class CsvWriter:
    """Rows written as ``pandas.DataFrame.to_csv(index=False)`` writes them (the ``csv``
    writer, minimal quoting, ``os.linesep``); a spilled field is streamed from its file,
    quoted when any piece of it needs quoting."""

    def __init__(self, out: IO[str], header: list[str]) -> None:
        self._out = out
        self._csv = csv.writer(out, lineterminator=os.linesep)
        self._csv.writerow(header)

    def row(self, values: list[NoteText]) -> None:
        if all(isinstance(v, str) for v in values):
            self._csv.writerow(values)
            return
        for n, value in enumerate(values):
            if n:
                self._out.write(",")
            if isinstance(value, str):
                self._out.write(_csv_field(value))
                continue
            quote = any(_csv_field(piece).startswith('"') for piece in text_pieces(value))
            self._out.write('"' if quote else "")
            for piece in text_pieces(value):
                self._out.write(piece.replace('"', '""') if quote else piece)
            self._out.write('"' if quote else "")
        self._out.write(os.linesep)


def _csv_field(value: str) -> str:
    """One field as the ``csv`` writer writes it in a row of more than one field."""
    out = io.StringIO()
    csv.writer(out, lineterminator=os.linesep).writerow([value, ""])
    return out.getvalue()[:-1 - len(os.linesep)]
