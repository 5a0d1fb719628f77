"""``fedmed deid ...``: detect, scrub, eval, corpus, train.

``fedmed/cli.py`` calls :func:`register` with its subparsers; each subcommand's parser
sets ``func`` to a handler ``(args) -> int`` (the exit code). Problems the user can fix
raise :class:`fedmed.errors.FedmedError` subclasses, which the main CLI prints as one line.

Exit codes: 0 success; ``scrub`` returns 2 when some items were quarantined (the rest
was written), so scripts notice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
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
    from fedmed.deid.gate import Gate

    if not args.input.exists():
        raise DataError(f"{args.input}: no such file or folder")
    config = _config(args)
    site_home = args.site_home or site_home_path(*LOCAL_SITE)
    gate = Gate(site_home, config)
    if args.input.is_dir():
        pairs = [(f, args.output / f.relative_to(args.input))
                 for f in sorted(args.input.rglob("*")) if f.is_file()]
    else:
        pairs = [(args.input, args.output)]
    quarantined = 0
    for src, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
        quarantined += _scrub_file(gate, src, dst, args.column)
    print(f"scrubbed {len(pairs)} file(s) into {args.output}; {quarantined} item(s) "
          f"quarantined under {site_home / 'quarantine'}", file=sys.stderr)
    return 2 if quarantined else 0


def _scrub_file(gate: Any, src: Path, dst: Path, column: str) -> int:
    from fedmed.deid import io

    suffix = src.suffix.lower()
    if suffix in DICOM_SUFFIXES or _is_dicom(src):
        result = gate.admit_dicom([src])
        for _, ds in result.released:
            ds.save_as(dst)
        return len(result.quarantined)
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
        io.write_csv(dst, frame)
    elif suffix == ".jsonl":
        records = io.read_jsonl(src, column, gate.config.max_bytes)
        io.write_jsonl(dst, [{**r, column: d.text, "patient_id": d.meta["patient"]}
                             for r, d in zip(records, out_docs, strict=True) if d is not None])
    elif suffix == ".xml":
        if out_docs[0] is not None:
            io.write_i2b2(dst, out_docs[0])
    elif out_docs[0] is not None:
        io.write_text(dst, out_docs[0].text)
    return len(result.quarantined)


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
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
