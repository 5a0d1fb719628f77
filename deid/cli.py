"""``fedmed deid ...``: detect, scrub, eval, corpus, train.

``fedmed/cli.py`` calls :func:`register` with its subparsers; each subcommand's parser
sets ``func`` to a handler ``(args) -> int`` (the exit code). Problems the user can fix
raise :class:`fedmed.errors.FedmedError` subclasses, which the main CLI prints as one line.

Exit codes: 0 success; 2 for every usage or input error (one line naming the file and the
problem: missing, binary, not UTF-8, malformed, an output that is an input), and ``scrub``
returns 2 when some items were quarantined (the rest was written), so scripts notice.

``scrub`` is all or nothing and never in place: the output is built in a hidden folder
beside OUT and moved into place only when every input file was scrubbed or quarantined with
a reason; an input that cannot be read stops it with nothing written. ``OUT.manifest.json``
beside the output lists each input file and its outcome.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fedmed.deid.batch import REPORTS_DIR
from fedmed.errors import ConfigError, DataError
from fedmed.state import site_home_path

# The site home of a stand-alone scrub: <state>/sites/local/site.
LOCAL_SITE = ("local", "site")
DICOM_SUFFIXES = (".dcm", ".dicom")
RECORD_SUFFIXES = (".csv", ".jsonl", ".xml")
"""Files of note records (CSV and JSONL streamed record by record, i2b2 XML read whole); any
other non-DICOM file is one plain-text note."""
SCRUB_TASK = "deid scrub"
"""The ``task`` of a ``deid scrub`` batch report (a node's names the task pack)."""


ScrubSigner = Callable[[Path], Callable[[dict[str, Any]], object] | None]
"""Given ``scrub``'s site home, the signer of its batch report (None: nothing to sign into)."""


def register(subparsers: argparse._SubParsersAction,
             scrub_signer: ScrubSigner | None = None) -> None:
    """Add the ``deid`` command and its subcommands to the main CLI.

    ``scrub_signer``: how ``scrub`` signs its batch into the site home's audit log. This
    package may not import the audit code (docs/architecture.md § Layout and layers), so
    the caller that may (``fedmed.commands.deid``) passes it; without it nothing is signed
    and ``scrub`` says so."""
    deid = subparsers.add_parser("deid", help="de-identification of notes and DICOM")
    sub = deid.add_subparsers(dest="deid_command", required=True)

    p = sub.add_parser("detect", help="print PHI spans found in text files")
    p.add_argument("files", nargs="+", type=Path)
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true",
                      help="print one JSON list (default: one tab-separated line per span)")
    form.add_argument("--jsonl", action="store_true",
                      help="print one JSON object per span as it is found (a long plain-text "
                           "note in bounded memory)")
    _detector_options(p)
    p.add_argument("--column", default="text", help="text column/field for CSV/JSONL input")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("scrub", help="write de-identified copies (text, CSV, i2b2 XML, DICOM)")
    p.add_argument("input", type=Path, help="file or folder")
    p.add_argument("output", type=Path, help="file (for a file input) or folder")
    p.add_argument("--site-home", type=Path, default=None,
                   help="site home holding the de-id secret and quarantine (default "
                        "<state>/sites/local/site; the state folder is $FEDMED_STATE or .fedmed)")
    p.add_argument("--mode", choices=("surrogate", "redact"), default=None)
    p.add_argument("--column", default="text", help="text column/field for CSV/JSONL input")
    _detector_options(p)
    p.set_defaults(func=cmd_scrub, scrub_signer=scrub_signer)

    p = sub.add_parser("review", help="review pages of a site's notes, most uncertain first "
                                      "(HTML to read, i2b2 XML to correct)")
    p.add_argument("inputs", nargs="+", type=Path, help="note files or folders of them")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for the pages (keep it in the site home: notes are PHI)")
    p.add_argument("--top", type=int, default=25, help="how many notes to write (default 25)")
    p.add_argument("--column", default="text", help="text column/field for CSV/JSONL input")
    _detector_options(p)
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("eval", help="score detection against i2b2-2014 XML gold notes")
    p.add_argument("--gold", type=Path, required=True, help="folder of i2b2 XML files")
    p.add_argument("--json", action="store_true")
    _detector_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("corpus", help="generate synthetic notes with gold PHI (i2b2 XML)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, required=True, help="notes in total (70/15/15 split)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--realistic", action="store_true",
                   help="write the realistic evaluation set instead (one folder, gold PHI "
                        "and clinical terms; never for training)")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("train", help="train a PHI tagger on an i2b2 XML corpus, or fine-tune "
                                     "the site's tagger on reviewed notes")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path, help="folder with train/ and dev/")
    source.add_argument("--from-review", type=Path, metavar="DIR",
                        help="a fedmed deid review folder whose XML files the annotators "
                             "corrected: fine-tune --base on them (BiLSTM-CRF)")
    p.add_argument("--base", type=Path, default=None,
                   help="with --from-review: the checkpoint to fine-tune (default: shipped)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--arch", choices=("bilstm-crf", "transformer"), default="bilstm-crf")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="transformer: stop after N steps")
    p.set_defaults(func=cmd_train)


def _detector_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=("combined", "tagger", "presidio"), default=None)
    p.add_argument("--tagger", default=None,
                   help="checkpoint (.pt) or transformer folder (default: shipped BiLSTM-CRF)")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML with a [deid] table (site policy settings)")


def _config(args: argparse.Namespace) -> Any:
    from fedmed.deid.config import DeidConfig

    base = DeidConfig.from_toml(args.config) if getattr(args, "config", None) else DeidConfig()
    changes = {k: v for k, v in (("engine", args.engine), ("tagger", args.tagger),
                                 ("mode", getattr(args, "mode", None))) if v is not None}
    return dataclasses.replace(base, **changes)


def _detector(args: argparse.Namespace) -> Any:
    from fedmed.deid.presidio_engine import Detector

    return Detector(_config(args))


# ---------------------------------------------------------------- handlers


def cmd_detect(args: argparse.Namespace) -> int:
    detector = _detector(args)
    rows: list[dict[str, Any]] = []
    for path in args.files:
        for row in _detected(detector, path, args.column):
            if args.json:
                rows.append(row)
            elif args.jsonl:
                print(json.dumps(row, ensure_ascii=False), flush=True)
            else:
                print(f"{row['file']}\t{row['start']}\t{row['end']}\t{row['type']}\t"
                      f"{row['score']}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    return 0


def _detected(detector: Any, path: Path, column: str) -> Iterator[dict[str, Any]]:
    """The spans of one file as output rows, in order. A plain-text note is streamed
    (:func:`fedmed.deid.stream.settled_segments`: rows come as its windows are detected,
    in memory that does not grow with it), and so are CSV and JSONL files: record by record,
    a long note spilled to a temporary file and detected from it the same way
    (:func:`fedmed.deid.stream.open_records`). An i2b2 XML file is read whole."""
    from fedmed.deid.io import read_notes
    from fedmed.deid.notetext import Spill, note_groups
    from fedmed.deid.presidio_engine import POOL_START_CHARS, POOL_START_NOTES
    from fedmed.deid.stream import RECORD_KINDS, open_records, scan_text_file, spilled_scan

    suffix = path.suffix.lower()
    if suffix not in RECORD_SUFFIXES:
        yield from _streamed_rows(detector, scan_text_file(path, detector.config.max_bytes),
                                  path)
        return
    if suffix not in RECORD_KINDS:
        doc = read_notes(path, column=column, max_bytes=detector.config.max_bytes)[0]
        for s in detector.detect(doc.text):
            yield _row(path, s.to_dict(doc.text), None)
        return
    hold = detector.config.window_chars
    notes = open_records(path, column, detector.config.max_bytes, hold)
    with Spill() as spill:
        records = (r.note(path) for r in notes.records(hold, spill))
        for group in note_groups(records, POOL_START_NOTES, POOL_START_CHARS):
            if not isinstance(group[0].text, str):  # a long note, alone: from its file
                record = group[0].doc.meta["row"] if notes.count > 1 else None
                yield from _streamed_rows(detector, spilled_scan(group[0].text), path, record)
                continue
            for note, spans in zip(group, detector.detect_batch([n.doc.text for n in group]),
                                   strict=True):
                for s in spans:
                    yield _row(path, s.to_dict(note.doc.text),
                               note.doc.meta["row"] if notes.count > 1 else None)


def _streamed_rows(detector: Any, scan: Any, path: Path, record: int | None = None
                   ) -> Iterator[dict[str, Any]]:
    """The rows of a note read from a file window by window, as they are settled."""
    from fedmed.deid.stream import settled_segments

    for start, text, spans in settled_segments(detector, scan):
        for s in spans:
            yield _row(path, {**s.to_dict(), "text": text[s.start - start:s.end - start]},
                       record)


def _row(path: Path, span: dict[str, Any], record: int | None) -> dict[str, Any]:
    """One output row: the file, the span, and its record's number in a file of several."""
    return {"file": str(path), **span, **({"record": record} if record is not None else {})}


def cmd_scrub(args: argparse.Namespace) -> int:
    """All or nothing, never in place (see :func:`_scrub_pairs` and :func:`_publish`); the
    whole run is one batch, signed (when the command has a signer for the site home)
    before anything is moved into place."""
    from fedmed.deid.dicom import PROFILE_VERSION
    from fedmed.deid.gate import Gate

    pairs = _scrub_pairs(args.input, args.output)
    config = _config(args)
    site_home = args.site_home or site_home_path(*LOCAL_SITE)
    signer_for = getattr(args, "scrub_signer", None)
    signer = signer_for(site_home) if signer_for is not None else None
    gate = Gate(site_home, config, audit=signer)
    dicom = {src for src, _ in pairs if _is_dicom(src)}
    kinds = sorted({"dicom" if src in dicom else "text" for src, _ in pairs})
    batch = gate.batch("+".join(kinds) or "text")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.output.name}.", suffix=".partial",
                                    dir=args.output.parent))
    try:
        records = []
        for src, rel in pairs:
            dst = staging / "out" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            records.append({"input": str(rel if args.input.is_dir() else src.name),
                            **_scrub_file(gate, batch, src, dst, args.column, src in dicom)})
        versions: dict[str, Any] = {"task": SCRUB_TASK}
        if "text" in kinds:
            versions["detector"] = gate.detector.versions
        if dicom:
            versions["dicom_profile"] = PROFILE_VERSION
        gate.finish(batch, versions)  # signed here, before anything is published
        manifest = _manifest(args, records, site_home, batch.batch_id, signer is not None)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(staging, args.output, args.input.is_dir())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    totals = manifest["files"]
    print(f"scrubbed {totals['scrubbed']} file(s), quarantined {totals['quarantined']} "
          f"file(s), partly quarantined {totals['partly quarantined']} file(s) into "
          f"{args.output} (manifest {manifest_path(args.output)}); "
          f"{manifest['items_quarantined']} item(s) quarantined under "
          f"{site_home / 'quarantine'}", file=sys.stderr)
    report = site_home / REPORTS_DIR / f"{batch.batch_id}.json"
    if signer is not None:
        print(f"batch {batch.batch_id} signed into the audit log of {site_home} as a "
              f"deid-batch entry (report {report})", file=sys.stderr)
    else:
        why = (f"{site_home} holds no site audit log (a home made by `fedmed site init` or a "
               "node has one)" if signer_for is not None else
               "this entry point signs nothing; `fedmed deid scrub` signs into a site home")
        print(f"batch {batch.batch_id} NOT signed: {why}; report {report}", file=sys.stderr)
    return 2 if manifest["items_quarantined"] else 0


def manifest_path(output: Path) -> Path:
    """Where ``scrub`` writes its manifest: beside the output file or folder."""
    return output.with_name(output.name + ".manifest.json")


def _scrub_pairs(src: Path, out: Path) -> list[tuple[Path, Path]]:
    """(input file, output path relative to the output) pairs; DataError (exit 2) for a
    missing input or an output that is, or lies inside, an input (scrub is never in place)."""
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    into, real = out.resolve(), src.resolve()
    if src.is_dir():
        if into == real or real in into.parents or into in real.parents:
            raise DataError(f"{out}: output folder is, holds or lies inside the input folder "
                            f"{src}; scrub never writes in place")
        if out.exists() and not out.is_dir():
            raise DataError(f"{out}: exists and is not a folder (the input is a folder)")
        return [(f, f.relative_to(src)) for f in sorted(src.rglob("*")) if f.is_file()]
    if into == real or (out.exists() and os.path.samefile(out, src)):
        raise DataError(f"{out}: output is the input file; scrub never writes in place")
    if out.is_dir():
        raise DataError(f"{out}: is a folder; for an input file give an output file")
    return [(src, Path(out.name))]


def _publish(staging: Path, output: Path, folder: bool) -> None:
    """Move the staged output into place, then the manifest beside it.

    A new output folder is one rename; into an existing folder the files are moved one by
    one (each replaces its namesake). Either way only once every input was scrubbed or
    quarantined with a reason.
    """
    built = staging / "out"
    if not folder:
        staged = built / output.name
        if staged.exists():
            os.replace(staged, output)
    elif not output.exists():
        os.rename(built, output)
    else:
        for f in sorted(built.rglob("*")):
            if f.is_file():
                target = output / f.relative_to(built)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
    os.replace(staging / "manifest.json", manifest_path(output))


def _manifest(args: argparse.Namespace, records: list[dict[str, Any]],
              site_home: Path, batch: str, signed: bool) -> dict[str, Any]:
    counts = {k: sum(r["outcome"] == k for r in records)
              for k in ("scrubbed", "quarantined", "partly quarantined")}
    return {"kind": "fedmed.deid.scrub-manifest", "version": 2, "input": str(args.input),
            "output": str(args.output), "quarantine": str(site_home / "quarantine"),
            "batch": batch, "signed": signed, "files": counts,
            "items_quarantined": sum(r["items_quarantined"] for r in records),
            "entries": records}


def _scrub_file(gate: Any, batch: Any, src: Path, dst: Path, column: str,
                dicom: bool) -> dict[str, Any]:
    """Scrub one file into ``dst`` within ``batch``; its manifest entry (outcome, counts,
    reasons). A plain-text note is streamed (:meth:`Gate.scrub_text_file`: memory does not
    grow with its length), and so are the notes of CSV and JSONL files
    (:func:`scrub_records`); an i2b2 XML file is read whole."""

    released, held = batch.released, len(batch.quarantined)
    suffix = src.suffix.lower()
    if dicom:
        for _, ds in gate.admit_dicom_files([src], batch):
            ds.save_as(dst)
    elif suffix not in RECORD_SUFFIXES:
        gate.scrub_text_file(src, dst, batch)
    else:
        scrub_records(gate, batch, src, dst, column)
    reasons = sorted({str(q["reason"]) for q in batch.quarantined[held:]})
    released, held = batch.released - released, len(batch.quarantined) - held
    outcome = ("scrubbed" if not held else "quarantined" if not released
               else "partly quarantined")
    return {"outcome": outcome, "written": dst.exists(), "items_released": released,
            "items_quarantined": held, "reasons": reasons}


def scrub_records(gate: Any, batch: Any, src: Path, dst: Path, column: str) -> None:
    """A CSV, JSONL or i2b2 XML file: its notes through the gate, written back in kind.

    CSV and JSONL are streamed record by record (:func:`fedmed.deid.stream.open_records`,
    :meth:`Gate.admit_stream`): a note longer than ``deid.window_chars`` waits in a private
    folder of the site home and is scrubbed from there window by window, its record written
    with the scrubbed text streamed in. An i2b2 XML file (one note; its tags give offsets
    into the whole text) is read whole."""
    from fedmed.deid import io
    from fedmed.deid.notetext import discard
    from fedmed.deid.records import CsvWriter, json_pieces
    from fedmed.deid.stream import open_records

    if src.suffix.lower() == ".xml":
        doc = io.read_i2b2(src, gate.config.max_bytes)
        doc.meta.setdefault("patient_id", src.stem)
        released = gate.admit_documents([doc], batch)
        if released:
            io.write_i2b2(dst, released[0])
        return
    hold = gate.config.window_chars
    notes = open_records(src, column, gate.config.max_bytes, hold)
    written = 0
    with gate.spill() as spill, open(dst, "w", encoding="utf-8", newline="") as out:
        records = notes.records(hold, spill)
        table = CsvWriter(out, notes.header) if notes.kind == "csv" else None
        for note, text in gate.admit_stream((r.note(src) for r in records), batch, spill):
            if text is None:
                continue
            if table is not None:
                table.row([text if name == column else note.fields[name]
                           for name in notes.header])
            else:
                patient = gate.pseudonym("patient", gate.patient(note.doc))
                out.writelines(json_pieces({**note.fields, column: "", "patient_id": patient},
                                           column, text, ensure_ascii=False))
                out.write("\n")
            discard(text)
            written += 1
    if not written:
        dst.unlink()


def _is_dicom(path: Path) -> bool:
    """A DICOM file: by its suffix, or by the ``DICM`` preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def cmd_eval(args: argparse.Namespace) -> int:
    from fedmed.deid.evaluate import format_report, retention, score
    from fedmed.deid.io import read_i2b2_dir
    from fedmed.deid.realistic_notes import read_terms

    gold = read_i2b2_dir(args.gold)
    detector = _detector(args)
    started = time.perf_counter()
    preds = detector.detect_batch([d.text for d in gold])
    seconds = time.perf_counter() - started
    result = score(gold, preds)
    terms = read_terms(args.gold)
    if terms is not None:
        result["retention"] = retention([terms.get(d.doc_id, []) for d in gold], preds)
    result["timing"] = {"seconds": seconds, "notes_per_s": len(gold) / seconds
                        if seconds else 0.0}
    result["detector"] = detector.versions
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result, title=f"{args.gold} ({detector.config.engine})"))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from fedmed.deid.io import read_notes
    from fedmed.deid.review import rank, write_review

    if args.top < 1:
        raise ConfigError("--top must be at least 1")
    files: list[Path] = []
    for item in args.inputs:
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.is_file()
                            and not p.name.startswith(".") and p.suffix.lower() != ".json")
        else:
            files.append(item)
    if not files:
        raise DataError("no note files to review")
    detector = _detector(args)
    docs = [d for f in files for d in read_notes(f, column=args.column,
                                                 max_bytes=detector.config.max_bytes)]
    rows = write_review(args.out, rank(docs, detector.detect_batch([d.text for d in docs])),
                        args.top)
    print(json.dumps({"out": str(args.out), "notes": len(docs), "written": len(rows)}))
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from fedmed.deid.corpus import write_corpus

    if args.n < 1:
        raise ConfigError("--n must be at least 1")
    if args.realistic:
        from fedmed.deid.realistic_notes import write_realistic

        print(json.dumps({"out": str(args.out), **write_realistic(args.out, args.n,
                                                                   args.seed)}))
        return 0
    sizes = write_corpus(args.out, args.n, args.seed)
    print(json.dumps({"out": str(args.out), **sizes}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fedmed.deid.train import train

    if args.from_review is not None:
        return _fine_tune_from_review(args)
    if args.base is not None:
        raise ConfigError("--base is for --from-review; a --corpus run trains from scratch")
    result = train(args.corpus, args.out, arch=args.arch, epochs=args.epochs, seed=args.seed,
                   max_minutes=args.max_minutes, max_steps=args.max_steps,
                   log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result.summary(), indent=2))
    return 0


def _fine_tune_from_review(args: argparse.Namespace) -> int:
    from fedmed.deid.review_training import fine_tune, reviewed_notes
    from fedmed.deid.taggers import DEFAULT_CHECKPOINT

    if args.arch != "bilstm-crf":
        raise ConfigError("--from-review fine-tunes the BiLSTM-CRF; --arch transformer is not "
                          "supported there")
    result = fine_tune(reviewed_notes(args.from_review), args.out,
                       base=args.base or DEFAULT_CHECKPOINT, epochs=args.epochs or 4,
                       seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result.summary(), indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m fedmed.deid.cli``) for use before ``fedmed`` wires it."""
    from fedmed.errors import FedmedError

    parser = argparse.ArgumentParser(prog="fedmed")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FedmedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
