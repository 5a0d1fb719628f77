"""Notes per second of each detection configuration on ~2,000-character notes.

Why: the gate runs on hospital nodes with a couple of CPU cores; issue 4 sets a goal of
>= 50 notes/s for the default pipeline. Notes are synthetic test-split notes joined until
they reach ``chars`` characters. Each configuration is measured in one process
(``workers = 1``) and, for the combined engine, as configured by default (``workers = 0``:
one detection process per usable core, see :mod:`fedmed.deid.workers`). Wall-clock notes/s
depends on what else runs on the machine; notes per CPU-second (worker processes
included) is the steadier number. Start-up (loading models, starting workers) and a
warm-up batch of other notes are not timed. ``bench/deid_throughput.py`` calls :func:`main`.

Long notes (``--long-mb 5 50``): one note of that many MB (test notes joined) through the
whole gate (windowed detection, surrogates, residual check) in a fresh process with
``workers = 1``, next to ``--n`` normal notes the same way; each row gives characters per
second and the process's peak resident memory (``ru_maxrss``) before and after, so memory
that grows with the note's length would show.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def gate_memory(n: int, chars: int) -> dict[str, Any]:
    """``n`` notes of ``chars`` through the gate in this process: speed and peak memory."""
    from fedmed.deid.gate import Gate
    from fedmed.deid.presidio_engine import Detector

    if chars <= 100_000:
        notes = sized_notes(n, chars)
    else:  # 20 distinct notes repeated: realistic text and PHI density at any length
        base = "\n".join(sized_notes(20, 2000, seed=2)) + "\n"
        notes = [(base * (chars // len(base) + 1))[:chars]]
    detector = Detector(DeidConfig(workers=1))
    with tempfile.TemporaryDirectory() as home:
        gate = Gate(home, detector.config, detector)
        gate.admit_texts(sized_notes(20, 2000, seed=1))  # warm-up, untimed
        before = _peak_rss_mb()
        started = time.perf_counter()
        result = gate.admit_texts(notes)
        seconds = time.perf_counter() - started
    total = sum(map(len, notes))
    return {"notes": n, "chars_per_note": round(total / n), "seconds": round(seconds, 1),
            "chars_per_s": round(total / seconds), "notes_per_s": round(n / seconds, 3),
            "peak_rss_mb_before": round(before), "peak_rss_mb": round(_peak_rss_mb()),
            "released": len(result.released), "quarantined": len(result.quarantined)}


def _in_fresh_process(n: int, chars: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "fedmed.deid.throughput", "--gate-memory",
                          str(n), str(chars)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--long-mb", type=float, nargs="+", default=None,
                        help="only the long-note rows: one note of each size (MB) through "
                             "the gate, next to --n normal notes (peak memory, chars/s)")
    parser.add_argument("--gate-memory", type=int, nargs=2, default=None,
                        help=argparse.SUPPRESS)  # N CHARS, one fresh process's row
    args = parser.parse_args(argv)
    if args.gate_memory:
        print(json.dumps(gate_memory(*args.gate_memory)))
        return 0
    if args.long_mb:
        long_rows = [_in_fresh_process(args.n, args.chars)] + [
            _in_fresh_process(1, int(mb * 1_000_000)) for mb in args.long_mb]
        if args.json:
            print(json.dumps(long_rows, indent=2))
        for r in long_rows if not args.json else ():
            print(f"gate, 1 process: {r['notes']:>4} note(s) of {r['chars_per_note']:>10,} "
                  f"chars  {r['seconds']:>7} s  {r['chars_per_s']:>7,} chars/s  "
                  f"{r['notes_per_s']:>8} notes/s  peak RSS {r['peak_rss_mb_before']} MB "
                  f"after start-up, {r['peak_rss_mb']} MB after")
        return 0
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
