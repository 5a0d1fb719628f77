"""Scale: coordinator memory and time per round for 10, 25, 50 and 100 simulated sites.

Side by side in one run, each federation size in a fresh child process (its own Ray, its own
state folder, so no size inherits another's memory or ε): ``fedmed run`` of the
``rhdnase-split`` pack (the rhDNase trial's institutions, 100 sites; the first N of them)
through the real command line (``fedmed.cli.main``), DP-SGD on, every site sampled each round
unless ``--fraction`` says otherwise, evaluation after the last round only. Printed per size:

- ``sampled``: sites trained per round (Flower's ``fraction_fit`` of N);
- ``s/round``: median wall time between successive aggregations (``metrics.json``'s
  ``aggregated_at``; round 1, where the node processes import torch and Opacus, and the
  last, which adds the final evaluation, are left out) — and that divided by the sampled
  sites;
- ``RSS MiB``: the coordinator process (the one running ``fedmed run``: ServerApp,
  in-memory SuperLink, Ray driver) sampled every 0.2 s — before the first round (imports
  and preflight done) and the peak while the rounds ran; ``growth`` is the peak minus
  before, less the model copies the coordinator must hold at once (one outgoing and one
  reply per sampled site: 2 × sampled × model bytes, 16 bytes for this 4-parameter model);
- ``preflight s``: opening every site's data and home in the coordinator before the run
  (``fedmed run``'s check that bad input fails in one line).

The simulated nodes are Ray actor processes, one per CPU (2 here) whatever the number of
sites, so node memory does not grow with sites and is not the coordinator's; it is left out.

Run: ``.venv/bin/python bench/scale.py [--sites 10,25,50,100] [--rounds 4] [--fraction 1]``
(the figures in docs/operator-guide.md § Scale). ``--child`` is the per-size worker.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEDERATION = REPO / "examples" / "rhdnase"
TASK = "rhdnase-split"
SAMPLE_SECONDS = 0.2


def rss_bytes(pid: int | str = "self") -> int:
    """A process's resident set (``VmRSS`` of /proc/PID/status; this process by default).

    Also ``bench/soak.py``'s measure, of other processes. Raises OSError once the process
    is gone, RuntimeError where there is no ``/proc`` (Linux only).
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    if pid == "self":
        raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")
    return 0  # a zombie: exited, not yet reaped


class RssSampler(threading.Thread):
    """Samples :func:`rss_bytes` until stopped; keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.halt.wait(SAMPLE_SECONDS)

    def stop(self) -> int:
        self.halt.set()
        self.join()
        return max(self.peak, rss_bytes())


def child(sites: int, rounds: int, fraction: float, out: Path) -> dict:
    """One federation size, in this process: the coordinator whose memory is measured."""
    import fedmed.simulation as simulation
    from fedmed.cli import main
    from fedmed.tasks import get_task

    names = get_task(TASK).site_names()[:sites]
    measured: dict = {}

    real_run = simulation.run_simulation
    started = time.perf_counter()

    def measured_run(*args: object, **kwargs: object) -> Path:
        # Everything before this call is imports and preflight; the sampler covers the rounds.
        measured["preflight_s"] = time.perf_counter() - started
        measured["rss_before"] = rss_bytes()
        sampler = RssSampler()
        sampler.start()
        try:
            return real_run(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            measured["rss_peak"] = sampler.stop()

    simulation.run_simulation = measured_run  # fedmed run imports it at call time
    argv = [
        "run", str(FEDERATION), "--rounds", str(rounds), "--out", str(out / "run"),
        "--set", f"task={TASK}", "--set", f"sites={','.join(names)}",
        "--set", f"fraction-train={fraction}", "--set", "evaluate-every=0",
    ]  # fmt: skip
    console = io.StringIO()  # the 100-row tables and round lines are not the figure
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"fedmed run exited {code} at {sites} sites:\n{console.getvalue()}")
    document = json.loads((out / "run" / "metrics.json").read_text(encoding="utf-8"))
    stamps = [r["aggregated_at"] for r in document["rounds"]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    steady = gaps[:-1] if len(gaps) > 1 else gaps  # the last gap adds the final evaluation
    sampled = [len(r.get("fit", {})) for r in document["rounds"]]
    return {
        "sites": sites,
        "sampled": statistics.median(sampled),
        "s_per_round": statistics.median(steady),
        "s_per_round_all": gaps,
        "model_bytes": _model_bytes(),
        **measured,
    }


def _model_bytes() -> int:
    from fedmed.tasks import get_task

    model = get_task(TASK).build_model()
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run_size(sites: int, rounds: int, fraction: float) -> dict:
    """One size in a fresh interpreter with its own state folder."""
    with tempfile.TemporaryDirectory(prefix=f"fedmed-scale-{sites}-") as folder:
        env = {**os.environ, "FEDMED_STATE": str(Path(folder) / "state")}
        env.pop("FLWR_HOME", None)
        result = Path(folder) / "result.json"
        subprocess.run(
            [sys.executable, __file__, "--child", str(sites), "--rounds", str(rounds),
             "--fraction", str(fraction), "--result", str(result)],
            check=True, env=env, cwd=folder,
        )  # fmt: skip
        return json.loads(result.read_text(encoding="utf-8"))


def mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def report(rows: list[dict]) -> None:
    print(f"{'sites':>5} {'sampled':>7} {'s/round':>8} {'s/site':>7} {'RSS before':>10} "
          f"{'RSS peak':>9} {'growth':>7} {'models':>7} {'preflight s':>11}")  # fmt: skip
    for row in rows:
        copies = int(2 * row["sampled"] * row["model_bytes"])
        row["growth"] = row["rss_peak"] - row["rss_before"] - copies
        print(f"{row['sites']:>5} {row['sampled']:>7g} {row['s_per_round']:>8.2f} "
              f"{row['s_per_round'] / row['sampled']:>7.3f} {mib(row['rss_before']):>10} "
              f"{mib(row['rss_peak']):>9} {mib(row['growth']):>7} {copies:>6}B "
              f"{row['preflight_s']:>11.1f}")  # fmt: skip
    print("(RSS in MiB; growth = peak - before - model copies; s/site = s/round per sampled site)")
    small, large = rows[0], rows[-1]
    if large is not small:
        peak = (large["rss_peak"] - 2 * large["sampled"] * large["model_bytes"]) / (
            small["rss_peak"] - 2 * small["sampled"] * small["model_bytes"]
        )
        print(f"{large['sites']} vs {small['sites']} sites: coordinator peak RSS x{peak:.2f} "
              f"(goal <= 1.2), time per round x{large['s_per_round'] / small['s_per_round']:.2f} "
              f"for x{large['sampled'] / small['sampled']:g} sampled sites")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="10,25,50,100", help="federation sizes (<= 100)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per run (>= 3)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction-train")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        out = Path(os.environ["FEDMED_STATE"])  # run_size's fresh folder, removed after
        out.mkdir(parents=True, exist_ok=True)
        result = child(args.child, args.rounds, args.fraction, out)
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return 0
    sizes = [int(s) for s in args.sites.split(",")]
    if args.rounds < 3 or not all(1 <= s <= 100 for s in sizes):
        parser.error("--rounds must be >= 3 and every size in 1..100")
    print(f"bench/scale.py: {TASK}, {args.rounds} rounds, fraction-train {args.fraction}, "
          f"DP on, {os.cpu_count()} CPUs; each size in its own process")  # fmt: skip
    rows = []
    for sites in sizes:
        start = time.perf_counter()
        rows.append(run_size(sites, args.rounds, args.fraction))
        print(f"  {sites} sites done in {time.perf_counter() - start:.0f} s", flush=True)
    report(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
