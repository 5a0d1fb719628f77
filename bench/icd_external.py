"""The ICD packs' federated models scored on notes their generator did not write.

Usage::

    python bench/icd_external.py [--tasks icd,icd-sentences] [--size 1000]
                                 [--epsilons 1,inf] [--seed 0] [--data bench/data/icd-external]

Why: the built-in test notes come from the same generator (templates, phrasings, section
layout) as the training notes, so a score on them says the plumbing works, not that a coder
reads other notes. ``bench/data/icd-external/external/notes.jsonl`` holds 36 notes written
by hand for this bench, apart from the generator: free-text visit notes, consults and
discharge summaries in other layouts, the codes often named in words the generator never
uses ("elevated BP", "clot in the left popliteal vein", "SIADH", "septic shock"), with
negations and family history of their own ("Denies smoking", "father had … diabetes"). It
is in the data-dir format of docs/icd.md (the format needs both splits; this bench scores
every note, whatever its split).

The loop (training, the untrained first row, scoring) is ``bench/external_site.py``; the
external notes pass a de-identification gate of their own first, like any site's notes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from external_site import REPO, compare_from, parser

DATA = REPO / "bench" / "data" / "icd-external"
SITE = "external"


def main(argv: list[str] | None = None) -> int:
    options = parser(__doc__.split("\n\n")[0], "icd,icd-sentences", "notes")
    options.add_argument("--data", type=Path, default=DATA)
    args = options.parse_args(argv)
    compare_from(args, args.data, SITE, ("micro_f1", "macro_f1"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
