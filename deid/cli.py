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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedmed.errors import ConfigError, DataError
from fedmed.state import site_home_path

# The site home of a stand-alone scrub: <state>/sites/local/site.
LOCAL_SITE = ("local", "site")
DICOM_SUFFIXES = (".dcm", ".dicom")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``deid`` command and its subcommands to the main CLI."""
    deid = subparsers.add_parser("deid", help="de-identification of notes and DICOM")
    sub = deid.add_subparsers(dest="deid_command", required=True)

    p = sub.add_parser("detect", help="print PHI spans found in text files")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON (default: one line per span)")
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
    p.set_defaults(func=cmd_scrub)

    p = sub.add_parser("eval", help="score detection against i2b2-2014 XML gold notes")
    p.add_argument("--gold", type=Path, required=True, help="folder of i2b2 XML files")
    p.add_argument("--json", action="store_true")
    _detector_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("corpus", help="generate synthetic notes with gold PHI (i2b2 XML)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, required=True, help="notes in total (70/15/15 split)")
    p.add_argument("--seed", type=int, required=True)
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("train", help="train a PHI tagger on an i2b2 XML corpus")
    p.add_argument("--corpus", type=Path, required=True, help="folder with train/ and dev/")
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
    from fedmed.deid.io import read_notes

    detector = _detector(args)
    rows: list[dict[str, Any]] = []
    for path in args.files:
        docs = read_notes(path, column=args.column, max_bytes=detector.config.max_bytes)
        for doc, spans in zip(docs, detector.detect_batch([d.text for d in docs]), strict=True):
            for s in spans:
                row = {"file": str(path), **s.to_dict(doc.text)}
                if len(docs) > 1:
                    row["record"] = doc.meta.get("row")
                rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for r in rows:
            print(f"{r['file']}\t{r['start']}\t{r['end']}\t{r['type']}\t{r['score']}")
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    """All or nothing, never in place (see :func:`_scrub_pairs` and :func:`_publish`)."""
    from fedmed.deid.gate import Gate

    pairs = _scrub_pairs(args.input, args.output)
    config = _config(args)
    site_home = args.site_home or site_home_path(*LOCAL_SITE)
    gate = Gate(site_home, config)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.output.name}.", suffix=".partial",
                                    dir=args.output.parent))
    try:
        records = []
        for src, rel in pairs:
            dst = staging / "out" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            records.append({"input": str(rel if args.input.is_dir() else src.name),
                            **_scrub_file(gate, src, dst, args.column)})
        manifest = _manifest(args, records, site_home)
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
              site_home: Path) -> dict[str, Any]:
    counts = {k: sum(r["outcome"] == k for r in records)
              for k in ("scrubbed", "quarantined", "partly quarantined")}
    return {"kind": "fedmed.deid.scrub-manifest", "version": 1, "input": str(args.input),
            "output": str(args.output), "quarantine": str(site_home / "quarantine"),
            "files": counts,
            "items_quarantined": sum(r["items_quarantined"] for r in records),
            "entries": records}


def _scrub_file(gate: Any, src: Path, dst: Path, column: str) -> dict[str, Any]:
    """Scrub one file into ``dst``; its manifest entry (outcome, counts, reasons)."""
    from fedmed.deid import io

    suffix = src.suffix.lower()
    if suffix in DICOM_SUFFIXES or _is_dicom(src):
        result = gate.admit_dicom([src])
        for _, ds in result.released:
            ds.save_as(dst)
        return _entry(result, dst)
    docs = io.read_notes(src, column=column, max_bytes=gate.config.max_bytes)
    if suffix == ".xml":
        docs[0].meta.setdefault("patient_id", src.stem)
    result = gate.admit_texts(docs)
    by_id = {d.doc_id: d for d in result.released}
    out_docs = [by_id.get(gate.pseudonym("doc", d.doc_id)) for d in docs]
    if suffix == ".csv":
        frame = io.read_csv(src, column, gate.config.max_bytes)
        keep = [i for i, d in enumerate(out_docs) if d is not None]
        frame = frame.iloc[keep].copy()
        frame[column] = [out_docs[i].text for i in keep]  # type: ignore[union-attr]
        if keep:
            io.write_csv(dst, frame)
    elif suffix == ".jsonl":
        records = io.read_jsonl(src, column, gate.config.max_bytes)
        kept = [{**r, column: d.text, "patient_id": d.meta["patient"]}
                for r, d in zip(records, out_docs, strict=True) if d is not None]
        if kept:
            io.write_jsonl(dst, kept)
    elif suffix == ".xml":
        if out_docs[0] is not None:
            io.write_i2b2(dst, out_docs[0])
    elif out_docs[0] is not None:
        io.write_text(dst, out_docs[0].text)
    return _entry(result, dst)


def _entry(result: Any, dst: Path) -> dict[str, Any]:
    released, held = len(result.released), len(result.quarantined)
    outcome = ("scrubbed" if not held else "quarantined" if not released
               else "partly quarantined")
    return {"outcome": outcome, "written": dst.exists(), "items_released": released,
            "items_quarantined": held,
            "reasons": sorted({str(q["reason"]) for q in result.quarantined})}


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def cmd_eval(args: argparse.Namespace) -> int:
    from fedmed.deid.evaluate import format_report, score
    from fedmed.deid.io import read_i2b2_dir

    gold = read_i2b2_dir(args.gold)
    detector = _detector(args)
    result = score(gold, detector.detect_batch([d.text for d in gold]))
    result["detector"] = detector.versions
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result, title=f"{args.gold} ({detector.config.engine})"))
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from fedmed.deid.corpus import write_corpus

    if args.n < 1:
        raise ConfigError("--n must be at least 1")
    sizes = write_corpus(args.out, args.n, args.seed)
    print(json.dumps({"out": str(args.out), **sizes}))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fedmed.deid.train import train

    result = train(args.corpus, args.out, arch=args.arch, epochs=args.epochs, seed=args.seed,
                   max_minutes=args.max_minutes, max_steps=args.max_steps,
                   log=lambda m: print(m, file=sys.stderr))
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
