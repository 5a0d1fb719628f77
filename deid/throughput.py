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
that grows with the note's length would show. The note is written to a file and scrubbed
into another as ``fedmed deid scrub`` does with a plain-text note: streamed
(:mod:`fedmed.deid.stream`), which is what a note too long to hold in memory goes through.
``--in-memory`` measures the gate on the note held in memory instead (what a node did
with the notes of a JSONL or CSV file before they were streamed too), to compare;
``--in-file jsonl|csv`` puts each long note in a JSONL or CSV file as one record between two
short ones and scrubs the file as ``deid scrub`` does (:mod:`fedmed.deid.records`: streamed).
``--window-memory MB`` prints the resident memory and the Python heap every 5 windows of one
streamed note (with ``--no-malloc-trim``: without giving freed memory back after each window),
to see what grows.
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
from pathlib import Path
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


def gate_memory(n: int, chars: int, streamed: bool = False,
                in_file: str | None = None) -> dict[str, Any]:
    """``n`` notes of ``chars`` through the gate in this process: speed and peak memory.

    ``streamed``: one note, from a file to a file (:meth:`Gate.scrub_text_file`);
    ``in_file`` (``jsonl`` or ``csv``): that note as one record of such a file between two
    short ones, scrubbed as ``deid scrub`` does (:func:`fedmed.deid.cli.scrub_records`)."""
    from fedmed.deid.gate import Gate
    from fedmed.deid.presidio_engine import Detector

    if chars <= 100_000:
        notes = sized_notes(n, chars)
    else:
        base = _long_note_base()
        notes = [] if streamed else [(base * (chars // len(base) + 1))[:chars]]
    detector = Detector(DeidConfig(workers=1))
    with tempfile.TemporaryDirectory() as home:
        gate = Gate(home, detector.config, detector)
        gate.admit_texts(sized_notes(20, 2000, seed=1))  # warm-up, untimed
        src = _long_note_file(Path(home), chars, in_file) if streamed else None
        before = _peak_rss_mb()
        started = time.perf_counter()
        if src is not None:
            batch = gate.batch("text")
            if in_file is None:
                gate.scrub_text_file(src, Path(home) / "out.txt", batch)
            else:
                from fedmed.deid.cli import scrub_records

                scrub_records(gate, batch, src, Path(home) / f"out.{in_file}", "text")
            gate.finish(batch, {})
            released, held = batch.released, len(batch.quarantined)
        else:
            result = gate.admit_texts(notes)
            released, held = len(result.released), len(result.quarantined)
        seconds = time.perf_counter() - started
    total = chars * n if streamed else sum(map(len, notes))
    return {"notes": n, "chars_per_note": round(total / n), "streamed": streamed,
            "in_file": in_file,
            "seconds": round(seconds, 1), "chars_per_s": round(total / seconds),
            "notes_per_s": round(n / seconds, 3),
            "peak_rss_mb_before": round(before), "peak_rss_mb": round(_peak_rss_mb()),
            "released": released, "quarantined": held}


def _long_note_base() -> str:
    """What a long note repeats: 20 distinct test notes (realistic text and PHI density)."""
    return "\n".join(sized_notes(20, 2000, seed=2)) + "\n"


def _long_note_file(folder: Path, chars: int, in_file: str | None = None) -> Path:
    """A long note of ``chars`` characters written to ``folder/note.txt`` a piece at a time
    (never held whole: the process measuring its memory must not); with ``in_file``, as the
    second of three records of ``folder/notes.jsonl`` or ``.csv`` (the other two short)."""
    base, path = _long_note_base(), folder / f"note{'s.' + in_file if in_file else '.txt'}"
    escape = {None: str, "jsonl": lambda t: json.dumps(t)[1:-1],
              "csv": lambda t: t.replace('"', '""')}[in_file]
    head, tail = {None: ("", ""),
                  "jsonl": ('{"id": "a", "text": "Seen by Dr. Ellen Ward."}\n'
                            '{"id": "long", "patient_id": "p1", "text": "',
                            '"}\n{"id": "c", "text": "MRN 9988776."}\n'),
                  "csv": ('id,patient_id,text\na,,Seen by Dr. Ellen Ward.\nlong,p1,"',
                          '"\nc,,MRN 9988776.\n')}[in_file]
    with open(path, "w", encoding="utf-8") as f:
        f.write(head)
        for _ in range(chars // len(base)):
            f.write(escape(base))
        f.write(escape(base[:chars % len(base)]) + tail)
    return path


def window_memory(chars: int, every: int = 5) -> list[dict[str, Any]]:
    """Resident memory now (``/proc/self/statm``, not the peak) and the Python heap
    (tracemalloc) every ``every`` windows while one long note is detected from a file, window
    by window (:func:`fedmed.deid.stream.settled_segments`): what grows with a note's length."""
    import tracemalloc

    from fedmed.deid.presidio_engine import Detector
    from fedmed.deid.stream import scan_text_file, settled_segments

    detector = Detector(DeidConfig(workers=1))
    detector.detect_batch(sized_notes(20, 2000, seed=1))  # warm-up
    rows = []
    with tempfile.TemporaryDirectory() as home:
        src = _long_note_file(Path(home), chars)
        tracemalloc.start()
        started = time.perf_counter()
        for i, _ in enumerate(settled_segments(detector, scan_text_file(src)), start=1):
            if i % every == 0:
                with open("/proc/self/statm") as f:
                    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
                rows.append({"windows": i, "seconds": round(time.perf_counter() - started),
                             "rss_mb": round(rss),
                             "python_heap_mb": round(tracemalloc.get_traced_memory()[0] / 2**20,
                                                     1)})
    return rows


def _in_fresh_process(n: int, chars: int, streamed: bool = False,
                      in_file: str | None = None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "fedmed.deid.throughput", "--gate-memory",
                          str(n), str(chars)] + (["--streamed"] if streamed else [])
                         + (["--in-file", in_file] if in_file else []),
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--long-mb", type=float, nargs="+", default=None,
                        help="only the long-note rows: one note of each size (MB) through "
                             "the gate, next to --n normal notes (peak memory, chars/s)")
    parser.add_argument("--in-memory", action="store_true",
                        help="long notes: the gate on the note held in memory, not streamed "
                             "from a file to a file as deid scrub does")
    parser.add_argument("--in-file", choices=("jsonl", "csv"), default=None,
                        help="long notes: each as one record of a JSONL or CSV file between "
                             "two short ones, scrubbed as deid scrub does (streamed)")
    parser.add_argument("--window-memory", type=float, default=None, metavar="MB",
                        help="resident memory and Python heap every 5 windows of one streamed "
                             "note of MB megabytes (detection only)")
    parser.add_argument("--no-malloc-trim", action="store_true",
                        help="--window-memory without giving freed memory back after each "
                             "window (FEDMED_DEID_MALLOC_TRIM=0)")
    parser.add_argument("--gate-memory", type=int, nargs=2, default=None,
                        help=argparse.SUPPRESS)  # N CHARS, one fresh process's row
    parser.add_argument("--streamed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gate_memory:
        print(json.dumps(gate_memory(*args.gate_memory, streamed=args.streamed,
                                     in_file=args.in_file)))
        return 0
    if args.window_memory:
        if args.no_malloc_trim and os.environ.get("FEDMED_DEID_MALLOC_TRIM") != "0":
            env = {**os.environ, "FEDMED_DEID_MALLOC_TRIM": "0"}  # read at import: a new process
            return subprocess.run([sys.executable, "-m", "fedmed.deid.throughput",
                                   "--window-memory", str(args.window_memory)], env=env).returncode
        for row in window_memory(int(args.window_memory * 1_000_000)):
            print(json.dumps(row), flush=True)
        return 0
    if args.long_mb:
        long_rows = [_in_fresh_process(args.n, args.chars)] + [
            _in_fresh_process(1, int(mb * 1_000_000), streamed=not args.in_memory,
                              in_file=None if args.in_memory else args.in_file)
            for mb in args.long_mb]
        if args.json:
            print(json.dumps(long_rows, indent=2))
        for r in long_rows if not args.json else ():
            how = ("in memory" if not r["streamed"] else
                   f"streamed in {r['in_file'].upper()}" if r.get("in_file") else "streamed")
            print(f"gate, 1 process, {how:<18}: {r['notes']:>4} note(s) of "
                  f"{r['chars_per_note']:>10,} "
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
