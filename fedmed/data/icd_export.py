"""Write the built-in synthetic ICD sites as ``<out>/<site>/notes.jsonl``, at any size.

Why: the built-in sites hold 120 training notes each, too few for DP-SGD to learn anything
useful at a small ε (docs/icd.md). Exported with more notes, they load like a hospital's
own notes (``data-dir`` of an icd federation, :mod:`fedmed.data.icd_notes`), through the
same de-identification gate. The first 120 training and the 40 test notes of a site are
the built-in ones; test notes never depend on ``--train-notes``.

Run: ``python -m fedmed.data.icd_export --out DIR [--train-notes 1000] [--test-notes 40]
[--sites academic,rural]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmed.data.icd_notes import NOTES_FILE, write_site_notes
from fedmed.data.icd_synth import N_TEST_DEFAULT, N_TRAIN_DEFAULT, SITES, builtin_site_notes


def export_sites(out: Path, sites: list[str], n_train: int, n_test: int) -> list[Path]:
    """One ``notes.jsonl`` per site under ``out``; the files written."""
    written = []
    for site in sites:
        path = out / site / NOTES_FILE
        write_site_notes(path, builtin_site_notes(site, n_train, n_test))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the site folders")
    parser.add_argument("--train-notes", type=int, default=N_TRAIN_DEFAULT)
    parser.add_argument("--test-notes", type=int, default=N_TEST_DEFAULT)
    parser.add_argument("--sites", default=",".join(SITES), help="comma-separated site names")
    args = parser.parse_args(argv)
    for path in export_sites(args.out, args.sites.split(","), args.train_notes, args.test_notes):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
