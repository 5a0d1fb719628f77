"""Readers and writers for the note formats a site hands to the de-id stage.

Formats: i2b2-2014 XML (text + gold/detected PHI tags), plain text, CSV with a text column,
JSONL with a text field. Every reader checks the boundary first -- missing file, over the
size limit, empty, binary (a NUL byte), not UTF-8, malformed -- and raises
:class:`fedmed.errors.DataError` naming the file, so nothing half-read is ever passed on to
detection or training.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import pandas as pd

from fedmed.deid.phi import CATEGORY_OF, Document, Span
from fedmed.deid.records import csv_records, jsonl_notes
from fedmed.errors import DataError

DEFAULT_MAX_BYTES = int(os.environ.get("FEDMED_DEID_MAX_BYTES", 64 * 1024 * 1024))
"""Largest input file accepted (bytes); override per call or with FEDMED_DEID_MAX_BYTES."""

_XML_ILLEGAL = {c for c in range(0x20) if c not in (0x9, 0xA, 0xD)}


def checked_size(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """The file's size in bytes; DataError if it is missing, empty or over ``max_bytes``."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    size = p.stat().st_size
    if size > max_bytes:
        raise DataError(f"{p}: {size} bytes is over the {max_bytes}-byte input limit")
    if size == 0:
        raise DataError(f"{p}: file is empty")
    return size


def read_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The file's bytes after existence, size and emptiness checks."""
    checked_size(path, max_bytes)
    return Path(path).read_bytes()


def refuse_binary(path: str | Path, raw: bytes, offset: int = 0) -> None:
    """DataError if ``raw`` (the file's bytes from ``offset`` on) holds a NUL byte: a
    binary file (or UTF-16/32 text), which would otherwise decode as "text" and yield
    bogus PHI spans."""
    at = raw.find(b"\x00")
    if at >= 0:
        raise DataError(f"{path}: binary file (NUL byte at offset {offset + at}), "
                        "expected UTF-8 text")


def not_utf8(path: str | Path, error: UnicodeDecodeError, offset: int = 0) -> DataError:
    """The error for a file that is not UTF-8; ``offset``: where the bytes that ``error``
    counts from start, after a byte-order mark."""
    return DataError(f"{path}: not UTF-8 text (byte {offset + error.start}: {error.reason})")


def read_text(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """A UTF-8 text file (BOM dropped); DataError if empty, too big, binary or not UTF-8.

    Reads the whole file; :func:`fedmed.deid.stream.scan_text_file` makes the same checks
    reading it in chunks, for ``deid scrub``'s plain-text notes of any length."""
    raw = read_bytes(path, max_bytes)
    refuse_binary(path, raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from e
    if not text.strip():
        raise DataError(f"{path}: file has no text")
    return text


def write_text(path: str | Path, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")


# ---------------------------------------------------------------- i2b2-2014 XML


def i2b2_xml(doc: Document) -> str:
    """The i2b2-2014 XML for ``doc`` (text in CDATA, one tag per span)."""
    bad = [c for c in doc.text if ord(c) in _XML_ILLEGAL]
    if bad:
        raise DataError(f"{doc.doc_id}: text holds control character {bad[0]!r} "
                        "that XML 1.0 cannot store")
    cdata = doc.text.replace("]]>", "]]]]><![CDATA[>")
    lines = ['<?xml version="1.0" encoding="UTF-8" ?>', "<deIdi2b2>",
             f"<TEXT><![CDATA[{cdata}]]></TEXT>", "<TAGS>"]
    for i, s in enumerate(sorted(doc.spans)):
        attrs = {
            "id": f"P{i}", "start": str(s.start), "end": str(s.end),
            "text": doc.text[s.start:s.end], "TYPE": s.type, "comment": "",
        }
        body = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
        lines.append(f"<{CATEGORY_OF[s.type]} {body} />")
    lines += ["</TAGS>", "</deIdi2b2>", ""]
    return "\n".join(lines)


def write_i2b2(path: str | Path, doc: Document) -> None:
    Path(path).write_text(i2b2_xml(doc), encoding="utf-8")


def parse_i2b2(xml: str, source: str, strict: bool = True) -> Document:
    """A :class:`Document` from i2b2-2014 XML text; ``source`` names it in errors.

    ``strict`` checks every tag's ``text`` attribute equals ``text[start:end]``.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise DataError(f"{source}: malformed i2b2 XML ({e})") from e
    if root.tag != "deIdi2b2":
        raise DataError(f"{source}: root element is <{root.tag}>, expected <deIdi2b2>")
    text_el = root.find("TEXT")
    if text_el is None:
        raise DataError(f"{source}: no <TEXT> element")
    text = text_el.text or ""
    tags = root.find("TAGS")
    spans = [_span_from_tag(tag, text, source, strict) for tag in (tags if tags is not None
                                                                   else [])]
    doc_id = Path(source).stem
    return Document(doc_id, text, sorted(spans), {"source": str(source)})


def _span_from_tag(tag: ET.Element, text: str, source: str, strict: bool) -> Span:
    where = f"{source}: tag {tag.get('id', '?')}"
    subtype = tag.get("TYPE", "")
    if subtype not in CATEGORY_OF:
        raise DataError(f"{where} has unknown TYPE {subtype!r}")
    try:
        start, end = int(tag.get("start", "")), int(tag.get("end", ""))
    except ValueError as e:
        raise DataError(f"{where} has non-integer start/end") from e
    if not 0 <= start < end <= len(text):
        raise DataError(f"{where} offsets {start}-{end} outside the text ({len(text)} chars)")
    if strict and tag.get("text") is not None and text[start:end] != tag.get("text"):
        raise DataError(f"{where}: text attribute {tag.get('text')!r} != "
                        f"text[{start}:{end}] {text[start:end]!r}")
    return Span(start, end, subtype)


def read_i2b2(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
              strict: bool = True) -> Document:
    """Read one i2b2-2014 XML file."""
    doc = parse_i2b2(read_text(path, max_bytes), str(path), strict)
    if not doc.text.strip():
        raise DataError(f"{path}: <TEXT> is empty")
    return doc


def read_i2b2_dir(folder: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[Document]:
    """All ``*.xml`` files of a folder, sorted by name."""
    p = Path(folder)
    if not p.is_dir():
        raise DataError(f"{p}: not a folder of i2b2 XML files")
    files = sorted(p.glob("*.xml"))
    if not files:
        raise DataError(f"{p}: holds no *.xml files")
    return [read_i2b2(f, max_bytes) for f in files]


# ---------------------------------------------------------------- CSV / JSONL


def read_csv(path: str | Path, column: str,
             max_bytes: int = DEFAULT_MAX_BYTES) -> pd.DataFrame:
    """A CSV whose ``column`` holds note text (other columns are carried along), all in
    memory; parsed as ``deid scrub`` streams it (:func:`fedmed.deid.records.csv_records`)."""
    table = csv_records([read_text(path, max_bytes)], str(path), column)
    return pd.DataFrame([r.fields for r in table.records], columns=table.header, dtype=str)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    frame.to_csv(path, index=False)


def read_jsonl(path: str | Path, text_key: str = "text",
               max_bytes: int = DEFAULT_MAX_BYTES) -> list[dict[str, Any]]:
    """JSON Lines, one object per line with a string ``text_key``; blank lines skipped. All in
    memory; parsed as ``deid scrub`` streams it (:func:`fedmed.deid.records.jsonl_notes`)."""
    return [r.fields for r in jsonl_notes([read_text(path, max_bytes)], str(path), text_key)]


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def read_notes(path: str | Path, column: str = "text",
               max_bytes: int = DEFAULT_MAX_BYTES) -> list[Document]:
    """Notes from one file of any supported kind, chosen by suffix.

    ``.xml`` i2b2, ``.csv`` (``column``), ``.jsonl`` (``column`` is the text key; a
    ``patient_id`` field/column is kept in ``meta``), anything else plain text.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".xml":
        return [read_i2b2(p, max_bytes)]
    if suffix not in (".csv", ".jsonl"):
        return [Document(p.stem, read_text(p, max_bytes), meta={"source": str(p)})]
    text = [read_text(p, max_bytes)]
    records = (csv_records(text, str(p), column).records if suffix == ".csv"
               else jsonl_notes(text, str(p), column))
    return [record.note(p).doc for record in records]
