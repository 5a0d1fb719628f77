"""Notes per second of each detection configuration on ~2,000-character notes.

Why: the gate runs on hospital nodes with a couple of CPU cores; issue 4 sets a goal of
>= 50 notes/s for the default pipeline. Notes are synthetic test-split notes joined until
they reach ``chars`` characters. Each configuration is measured in one process
(``workers = 1``) and, for the combined engine, as configured by default (``workers = 0``:
one detection process per usable core, see :mod:`fedmed.deid.workers`). Wall-clock notes/s
depends on what else runs on the machine; notes per CPU-second (worker processes
included) is the steadier number. Start-up (loading models, starting workers) and a
warm-up batch of other notes are not timed. ``bench/deid_throughput.py`` calls :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time of this process plus of the given child processes (Linux ``/proc``)."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def measure(engine: str, notes: Sequence[str], warm_up: Sequence[str], gate: bool = False,
            workers: int = 1) -> dict[str, Any]:
    """Notes/s of ``Detector.detect_batch`` (or of the whole gate) over ``notes``."""
    from fedmed.deid.presidio_engine import Detector

    detector = Detector(DeidConfig(engine=engine, workers=workers))
    started = time.perf_counter()
    processes = detector.start_workers()
    start_up = time.perf_counter() - started
    detector.detect_batch(list(warm_up))  # first-call allocations, in every worker
    pids = detector.worker_pids
    started, cpu_started = time.perf_counter(), _cpu_seconds(pids)
    if gate:
        from fedmed.deid.gate import Gate

        with tempfile.TemporaryDirectory() as home:
            Gate(home, detector.config, detector).admit_texts(list(notes))
    else:
        detector.detect_batch(list(notes))
    seconds = time.perf_counter() - started
    cpu = _cpu_seconds(pids) - cpu_started
    detector.close()
    name = engine + (" + surrogates + residual (gate)" if gate else "")
    return {"engine": name, "processes": processes, "workers_setting": workers,
            "worker_start_s": round(start_up, 1) if processes > 1 else 0.0,
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
    warm_up = sized_notes(40, args.chars, seed=1)
    rows = [measure(e, notes, warm_up) for e in ("tagger", "presidio", "combined")]
    rows.append(measure("combined", notes, warm_up, gate=True))
    rows.append(measure("combined", notes, warm_up, workers=0))
    rows.append(measure("combined", notes, warm_up, gate=True, workers=0))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            where = (f"{r['processes']} processes (start-up {r['worker_start_s']} s, untimed)"
                     if r["processes"] > 1 else "1 process")
            print(f"{r['engine']:<40} {where:<38} {r['notes_per_s']:>6} notes/s wall, "
                  f"{r['notes_per_cpu_s']:>6} per CPU-second "
                  f"({r['notes']} notes of ~{r['mean_chars']} chars)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
