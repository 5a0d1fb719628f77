"""Active learning for a site's annotators: notes chosen by uncertainty vs at random.

Usage::

    python bench/deid_active_learning.py [--notes 200] [--eval 50] [--sizes 25,50,100]
                                         [--epochs 4] [--seed 15]

The realistic notes (``fedmed deid corpus --realistic``'s generator, written apart from the
training templates) stand in for a site's own notes: the first ``--notes`` − ``--eval``
are the pool its annotators review, the last ``--eval`` are held out. For each size k the
pool's k notes are chosen two ways — most uncertain first, as ``fedmed deid review`` ranks
them with the default (combined) detector, and at random (seeded) — their gold spans play
the annotators' corrections, and the shipped BiLSTM-CRF is fine-tuned on them as ``fedmed
deid train --from-review`` does. Each tuned tagger then runs in the default combined engine
on the held-out notes: binary token P / R / F1, clinical-term retention, and patient names
missed. The first row is the shipped tagger untouched.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fedmed.deid.config import DeidConfig
from fedmed.deid.evaluate import retention, score
from fedmed.deid.phi import Document
from fedmed.deid.presidio_engine import Detector
from fedmed.deid.realistic_notes import generate
from fedmed.deid.review import rank
from fedmed.deid.review_training import fine_tune

Terms = list[tuple[int, int, str]]


def held_out_row(label: str, tagger: str | None, docs: Sequence[Document],
                 terms: Sequence[Terms]) -> str:
    """The combined engine with ``tagger`` on the held-out notes, as one table row."""
    detector = Detector(dataclasses.replace(DeidConfig(), tagger=tagger))
    preds = detector.detect_batch([d.text for d in docs])
    result = score(docs, preds)
    binary = result["token"]["binary"]
    kept = retention(terms, preds)["rate"]
    names = result["missed_direct_identifiers"].get("PATIENT", 0)
    return (f"| {label} | {binary['precision']:.3f} / {binary['recall']:.4f} / "
            f"{binary['f1']:.3f} | {kept:.3f} | {names} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--eval", type=int, default=50)
    parser.add_argument("--sizes", default="25,50,100")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args(argv)
    sizes = [int(k) for k in args.sizes.split(",")]
    notes = generate(args.notes, args.seed)
    pool, held = notes[: -args.eval], notes[-args.eval:]
    if max(sizes) > len(pool):
        parser.error(f"--sizes up to {max(sizes)} need a pool of that many notes")
    docs, terms = [d for d, _ in held], [t for _, t in held]
    pool_docs = [d for d, _ in pool]
    detector = Detector(DeidConfig())
    by_doubt = [item.doc.doc_id for item in
                rank(pool_docs, detector.detect_batch([d.text for d in pool_docs]))]
    by_chance = random.Random(args.seed).sample([d.doc_id for d in pool_docs], len(pool_docs))
    gold = {d.doc_id: d for d in pool_docs}
    print(f"realistic notes (seed {args.seed}): pool {len(pool)}, held out {len(held)}; "
          f"fine-tuning {args.epochs} epochs; the combined engine on the held-out notes")
    print("| tagger | binary P / R / F1 | retention | patient names missed |")
    print("|---|---|---|---|")
    print(held_out_row("shipped (0 reviewed)", None, docs, terms), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for k in sizes:
            for name, order in (("uncertainty", by_doubt), ("random", by_chance)):
                started = time.monotonic()
                out = Path(tmp) / f"{name}-{k}"
                fine_tune([gold[i] for i in order[:k]], out, epochs=args.epochs,
                          log=lambda _m: None)
                row = held_out_row(f"{k} by {name}", str(out / "bilstm_crf.pt"), docs, terms)
                print(f"{row}  <!-- {time.monotonic() - started:.0f} s -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
