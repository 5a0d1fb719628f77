"""Notes per second of each detection configuration on ~2,000-character notes.

Why: the gate runs on hospital nodes with a couple of CPU cores; issue 4 sets a goal of
>= 50 notes/s for the default pipeline. Notes are synthetic test-split notes joined until
they reach ``chars`` characters. Wall-clock notes/s depends on what else runs on the
machine; notes per CPU-second (one process, one core) is the steadier number.
``bench/deid_throughput.py`` can simply call :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from fedmed.deid.config import DeidConfig
from fedmed.deid.corpus import generate


def sized_notes(n: int, chars: int = 2000, seed: int = 0) -> list[str]:
    """``n`` notes of about ``chars`` characters (test-split notes joined)."""
    pool = iter(generate(n * 8, seed, "test"))
    notes = []
    for _ in range(n):
        parts: list[str] = []
        while sum(len(p) for p in parts) < chars:
            parts.append(next(pool).text)
        notes.append("\n".join(parts))
    return notes


def measure(engine: str, notes: Sequence[str], gate: bool = False) -> dict[str, Any]:
    """Notes/s of ``Detector.detect_batch`` (or of the whole gate) over ``notes``."""
    from fedmed.deid.presidio_engine import Detector

    detector = Detector(DeidConfig(engine=engine))
    detector.detect_batch(list(notes[:2]))  # warm-up: first-call allocations
    started, cpu_started = time.perf_counter(), time.process_time()
    if gate:
        from fedmed.deid.gate import Gate

        with tempfile.TemporaryDirectory() as home:
            Gate(home, detector.config, detector).admit_texts(list(notes))
    else:
        detector.detect_batch(list(notes))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"engine": engine + (" + surrogates + residual (gate)" if gate else ""),
            "notes": len(notes), "mean_chars": round(sum(map(len, notes)) / len(notes)),
            "seconds": round(seconds, 2), "notes_per_s": round(len(notes) / seconds, 1),
            "cpu_seconds": round(cpu, 2), "notes_per_cpu_s": round(len(notes) / cpu, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    notes = sized_notes(args.n, args.chars)
    rows = [measure(e, notes) for e in ("tagger", "presidio", "combined")]
    rows.append(measure("combined", notes, gate=True))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['engine']:<45} {r['notes_per_s']:>6} notes/s wall, "
                  f"{r['notes_per_cpu_s']:>6} per CPU-second "
                  f"({r['notes']} notes of ~{r['mean_chars']} chars)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
