"""``python -m fedmed.deid.guard_check FOLDER...``: did the guards veto any gold PHI?

Why a module of its own: it loads the shipped tagger through the detector, and
:mod:`fedmed.deid.guards` is imported by the detector (no import cycles, pyproject's
``acyclic`` contract). docs/deid.md § Realistic notes runs it on the evaluation folders.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from fedmed.deid.config import DeidConfig
from fedmed.deid.guards import vetoed_phi
from fedmed.deid.io import read_i2b2_dir
from fedmed.deid.presidio_engine import Detector


def main(argv: Sequence[str] | None = None) -> int:
    """:func:`fedmed.deid.guards.vetoed_phi` of the shipped tagger on each i2b2 gold
    folder, printed as JSON (``{folder: [breaches]}``); exit status 1 if any."""
    folders = list(sys.argv[1:] if argv is None else argv)
    tagger = Detector(DeidConfig(workers=1, engine="tagger")).tagger
    if tagger is None:
        raise RuntimeError("the tagger engine loaded no tagger")
    out = {}
    for folder in folders:
        docs = read_i2b2_dir(folder)
        out[folder] = vetoed_phi(docs, tagger.predict([d.text for d in docs]))
    print(json.dumps(out, indent=1))
    return 1 if any(out.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
