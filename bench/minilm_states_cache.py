"""What keeping icd-minilm's frozen states saves a node each time a process loads its notes.

A deployed node starts a new ClientApp process every round and a simulation a new actor
per federation; each loads the site's notes. Side by side, for one built-in site, in
this process: loading with the frozen MiniLM layers run again (``encode``) against
loading with the states kept beside the admitted notes (``kept``), each the median of
``--repeats`` loads after a warm-up load that also admits the notes through the gate.
Prints both, their ratio and the size of the kept files.
Run: ``.venv/bin/python bench/minilm_states_cache.py [--site rural] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fedmed.tasks import get_task

KEPT = "minilm-states-*.pt"


def timed_load(site: str, home: Path, forget: bool) -> float:
    if forget:
        for path in home.rglob(KEPT):
            path.unlink()
    start = time.perf_counter()
    get_task("icd-minilm").load_site(site, home, seed=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", default="rural")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        timed_load(args.site, home, forget=False)  # gate admission and model load, once
        encode = statistics.median(timed_load(args.site, home, True) for _ in range(args.repeats))
        kept = statistics.median(timed_load(args.site, home, False) for _ in range(args.repeats))
        size = sum(path.stat().st_size for path in home.rglob(KEPT)) / 2**20
    print(f"icd-minilm load_site {args.site}: encode {encode:.2f} s, kept {kept:.2f} s, "
          f"ratio {encode / kept:.1f}x; kept states {size:.0f} MiB")


if __name__ == "__main__":
    main()
