"""Write the built-in synthetic ECG sites as WFDB site folders, at any size.

Why: the built-in sites hold 300 training windows each, too few for DP-SGD to learn at
ε = 1 (the model collapses to one class, docs/results.md § ECG). Exported with more
recordings, a site loads like a hospital's own PhysioNet export (``data-dir`` of an ecg
federation, :func:`fedmed.data.ecg_readers.read_labelled_folder`): one WFDB record
(``.hea`` + ``.dat``) per recording at the site's native rate, in mV, and
``labels.csv`` naming each record's class. The reader then splits each site 75 / 25,
stratified by class, with its fixed seed.

Run: ``python -m fedmed.data.ecg_export --out DIR [--recordings 400] [--seed 0]
[--sites boston,leeds]``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import wfdb

from fedmed.data.ecg_readers import LABELS_FILE
from fedmed.data.ecg_synth import CLASS_NAMES, SITES, acquisition, simulate_site

DEFAULT_RECORDINGS = 400
"""Per site: the reader's 75 / 25 split then gives the built-in sites' 300 / 100."""


def export_site(folder: Path, site: str, recordings: int, seed: int) -> Path:
    """``recordings`` WFDB records of ``site`` and their ``labels.csv`` in ``folder``."""
    setup = acquisition(site)
    raw = simulate_site(site, recordings, seed)
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(recordings))
    rows = []
    for index, (signal, label) in enumerate(zip(raw.signals, raw.labels, strict=True)):
        name = f"{site}-{index:0{width}d}"
        wfdb.wrsamp(
            name,
            fs=raw.fs,
            units=["mV"],
            sig_name=[setup.lead],
            p_signal=signal.astype("float64")[:, None],
            fmt=["16"],
            write_dir=str(folder),
        )
        rows.append({"file": f"{name}.hea", "label": CLASS_NAMES[int(label)]})
    labels = folder / LABELS_FILE
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the site folders")
    parser.add_argument("--recordings", type=int, default=DEFAULT_RECORDINGS,
                        help="recordings per site (train and test together)")
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    parser.add_argument("--sites", default=",".join(SITES), help="comma-separated site names")
    args = parser.parse_args(argv)
    if args.recordings < 8:
        parser.error("--recordings must be at least 8, so every split holds a few windows")
    for site in args.sites.split(","):
        print(export_site(args.out / site, site, args.recordings, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
