"""Soak: does memory stay flat over hundreds of rounds, through node crashes?

Two parts, each printing, per process group, its resident memory (RSS, ``VmRSS``) sampled
once per round — whenever the run directory gets the round's checkpoint — at the end of
the warm-up and then min / median / max after it, the range ((max − min) / min) and the
drift (median of the last tenth of the rounds after warm-up against the first tenth):

- ``--part sim`` (default 500 rounds): ``fedmed run examples/heart`` on Flower's
  Simulation Engine, in a child process with its own state folder. Groups: the
  *coordinator* (the ``fedmed run`` process: ServerApp, in-memory SuperLink, Ray driver)
  and *Ray* (every process below it: GCS, raylet, the node actors that run the sites).
- ``--part deploy`` (default 100 rounds): the same federation deployed on loopback
  (:class:`fedmed.deploy.loopback.LoopbackFederation`: a SuperLink and one SuperNode per
  site, TLS, node authentication), submitted by ``fedmed run --coordinator`` in a child
  process. Groups: the *coordinator* (SuperLink + its SuperExec + the ServerApp) and each
  *node* (its SuperNode + warm ClientApp worker). Every ``--kill-every`` rounds one node,
  in turn, is killed (SIGKILL, a crash) and started again; its samples from the kill to
  the end of a warm-up after the restart are left out, as its first warm-up is. At the end the same
  federation runs a short second run and its ServerApp is killed outright, and the
  coordinator reconciles its runs (what ``fedmed coordinator start`` does every few
  seconds); ``fedmed coordinator status`` is printed before and after, and the part fails
  if any run is still shown live at the end.

Defaults: the heart folder's settings (DP-SGD, evaluation every round) with three sites;
the deployed run without SecAgg+ (``--set secagg=true`` adds it, ~2.4x the round time).
``--samples FILE`` writes every sample as JSON. ``--python-heap`` (sim) also runs the
coordinator under tracemalloc and prints how much its Python heap grew between the end of
the warm-up and the last round, by the line that allocated it: what of the RSS growth is
Python objects fedmed or Flower keep, and what is not.

Run: ``nice .venv/bin/python bench/soak.py --part sim --rounds 500`` and
``nice .venv/bin/python bench/soak.py --part deploy --rounds 100 --kill-every 20``
(the figures in docs/operator-guide.md § Soak).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from scale import rss_bytes

from fedmed.cli import main as fedmed
from fedmed.deploy.errors import NodeNotRegistered
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.processes import ChildProcess, descendants

REPO = Path(__file__).resolve().parents[1]
HEART = REPO / "examples" / "heart"
HEART_DATA = REPO / "fedmed" / "data" / "uci_heart"
POLL_SECONDS = 0.02
HEAP_REPORT = "python-heap.txt"
MIB = 2**20

Groups = Callable[[], dict[str, list[int]]]


def tree(pid: int | None) -> list[int]:
    """``pid`` and every process below it (none if ``pid`` is None)."""
    return [] if pid is None else [pid, *descendants(pid)]


def total_rss(pids: Iterable[int]) -> int:
    """Summed RSS of ``pids``; a process that exited meanwhile counts 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += rss_bytes(pid)
    return total


class RoundSampler(threading.Thread):
    """Samples every group's RSS each time ``run_dir`` gets a newer checkpoint.

    Polls ``checkpoints/`` every :data:`POLL_SECONDS` (a directory listing: the coordinator
    writes ``round-NNNN.npz`` after each aggregated round and keeps the last three), so a
    round is sampled right after it ended, in whatever process state the next begins.
    """

    def __init__(self, run_dir: Path, groups: Groups) -> None:
        super().__init__(daemon=True)
        self.folder = Path(run_dir) / "checkpoints"
        self.groups = groups
        self.samples: dict[str, dict[int, int]] = {}
        self.round = 0
        self.halt = threading.Event()
        self.changed = threading.Condition()

    def latest(self) -> int:
        rounds = [int(p.name[6:10]) for p in self._listing() if p.name.startswith("round-")]
        return max(rounds, default=0)

    def _listing(self) -> list[Path]:
        try:
            return list(self.folder.iterdir())
        except OSError:
            return []

    def run(self) -> None:
        while not self.halt.wait(POLL_SECONDS):
            latest = self.latest()
            if latest <= self.round:
                continue
            for name, pids in self.groups().items():
                if pids:
                    self.samples.setdefault(name, {})[latest] = total_rss(pids)
            with self.changed:
                self.round = latest
                self.changed.notify_all()

    def wait_for(self, server_round: int, alive: Callable[[], bool]) -> bool:
        """Wait until ``server_round`` was sampled; False if ``alive()`` turned False first."""
        with self.changed:
            while self.round < server_round:
                if not alive():
                    return False
                self.changed.wait(timeout=1.0)
        return True

    def stop(self) -> None:
        self.halt.set()
        self.join()


@dataclass
class Stats:
    """One group's memory over the rounds after warm-up."""

    name: str
    warm: int  # RSS at the end of the warm-up (the first sample kept)
    values: list[int] = field(default_factory=list)

    @property
    def range_pct(self) -> float:
        return 100.0 * (max(self.values) - min(self.values)) / min(self.values)

    @property
    def drift_pct(self) -> float:
        tenth = max(1, len(self.values) // 10)
        first = statistics.median(self.values[:tenth])
        return 100.0 * (statistics.median(self.values[-tenth:]) - first) / first


def stats(name: str, samples: dict[int, int], skipped: set[int]) -> Stats | None:
    """The samples of rounds not in ``skipped`` (warm-ups), in round order."""
    kept = [value for r, value in sorted(samples.items()) if r not in skipped and value > 0]
    return Stats(name, kept[0], kept) if kept else None


def report(rows: list[Stats], warmup: int, limit: float) -> bool:
    """Print the table; True when every group stayed within ``limit`` % (range)."""
    print(f"RSS in MiB, sampled after every round; warm-up: {warmup} rounds after each start")
    print(f"{'group':<24} {'warm':>8} {'min':>8} {'median':>8} {'max':>8} {'range %':>8} "
          f"{'drift %':>8} {'samples':>7}")  # fmt: skip
    flat = True
    for row in rows:
        within = row.range_pct <= limit
        flat &= within
        print(f"{row.name:<24} {row.warm / MIB:>8.1f} {min(row.values) / MIB:>8.1f} "
              f"{statistics.median(row.values) / MIB:>8.1f} {max(row.values) / MIB:>8.1f} "
              f"{row.range_pct:>8.1f} {row.drift_pct:>+8.1f} {len(row.values):>7}"
              f"{'' if within else '  > ' + format(limit, 'g') + ' %'}")  # fmt: skip
    print(f"flat within {limit:g} % after warm-up: {'yes' if flat else 'NO'}")
    return flat


def save(path: Path | None, part: str, samples: dict[str, dict[int, int]], **extra: object) -> None:
    if path is not None:
        document = {"part": part, "samples": samples, **extra}
        path.write_text(json.dumps(document, indent=1), encoding="utf-8")


# --- simulation -----------------------------------------------------------------------------


def sim_arguments(args: argparse.Namespace, tmp: Path) -> list[str]:
    """``fedmed run``'s arguments for the simulated soak, its files under ``tmp``."""
    return [
        "run", str(HEART), "--rounds", str(args.rounds), "--out", str(tmp / "run"),
        "--sites-home", str(tmp / "homes"), "--set", f"sites={args.sites}",
        *[f"--set={item}" for item in args.set],
    ]  # fmt: skip


def part_sim(args: argparse.Namespace) -> bool:
    with tempfile.TemporaryDirectory(prefix="fedmed-soak-") as folder:
        tmp = Path(folder)
        run_dir = tmp / "run"
        if args.python_heap:  # this script again, running fedmed run under tracemalloc
            argv = [sys.executable, __file__, "--part", "sim", "--rounds", str(args.rounds),
                    "--warmup", str(args.warmup), "--sites", args.sites, "--heap-child", folder,
                    *[f"--set={item}" for item in args.set]]  # fmt: skip
        else:
            argv = [sys.executable, "-m", "fedmed.cli", *sim_arguments(args, tmp)]
        env = {**os.environ, "FEDMED_STATE": str(tmp / "state")}
        env.pop("FLWR_HOME", None)
        run = ChildProcess("fedmed-run", argv, tmp / "run.log", env=env, cwd=tmp)
        started = time.perf_counter()
        run.start()
        sampler = RoundSampler(run_dir, lambda: {"coordinator": [run.pid],
                                                 "Ray (nodes)": descendants(run.pid)})
        sampler.start()
        code = run.process.wait() if run.process is not None else 1
        sampler.stop()
        elapsed = time.perf_counter() - started
        if code != 0:
            raise SystemExit(f"fedmed run exited {code}: {' | '.join(run.tail(8))}")
        document = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        heap = (tmp / HEAP_REPORT).read_text(encoding="utf-8") if args.python_heap else ""
    print(f"soak sim: heart, sites {args.sites}, {args.rounds} rounds on the Simulation Engine "
          f"in {elapsed:.0f} s; run status {document.get('status')}")  # fmt: skip
    skipped = set(range(1, args.warmup + 1))
    rows = [s for name, samples in sampler.samples.items()
            if (s := stats(name, samples, skipped)) is not None]  # fmt: skip
    save(args.samples, "sim", sampler.samples, rounds=args.rounds, warmup=args.warmup)
    flat = report(rows, args.warmup, args.limit)
    if heap:
        print("(RSS above includes tracemalloc's own records: take the RSS figures from a run "
              f"without --python-heap)\n{heap}", end="")  # fmt: skip
    return flat


def heap_child(args: argparse.Namespace) -> int:
    """``--python-heap``'s child: ``fedmed run`` in this process under tracemalloc, with
    snapshots of the Python heap after the warm-up's last round and after the last round;
    what grew between them, by the line that allocated it, goes to ``HEAP_REPORT``."""
    tmp = Path(args.heap_child)
    tracemalloc.start(1)
    marks = (args.warmup, args.rounds)
    snapshots: dict[int, tracemalloc.Snapshot] = {}
    watcher = RoundSampler(tmp / "run", dict)

    def watch() -> None:
        while len(snapshots) < len(marks) and not watcher.halt.wait(POLL_SECONDS):
            done = watcher.latest()
            for mark in marks:
                if done >= mark and mark not in snapshots:
                    snapshots[mark] = tracemalloc.take_snapshot()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    with contextlib.redirect_stdout(io.StringIO()):
        code = fedmed(sim_arguments(args, tmp))
    thread.join(timeout=30)
    first, last = (snapshots.get(mark) for mark in marks)
    if first is None or last is None:
        return code or 1
    growth = last.compare_to(first, "lineno")
    span = args.rounds - args.warmup
    total = sum(stat.size_diff for stat in growth)
    lines = [f"Python heap (tracemalloc) of the coordinator, round {args.warmup} to "
             f"{args.rounds}: {total / 1024:+.0f} KiB ({total / span / 1024:+.2f} KiB a round); "
             "largest changes by allocating line:"]  # fmt: skip
    for stat in growth[:10]:
        where = stat.traceback[0]
        lines.append(f"  {stat.size_diff / 1024:+8.0f} KiB {stat.count_diff:+7d} blocks  "
                     f"{where.filename.replace(str(REPO) + '/', '')}:{where.lineno}")  # fmt: skip
    (tmp / HEAP_REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return code


# --- deployment -----------------------------------------------------------------------------


def submitter(federation: LoopbackFederation, sites: str, out: str, rounds: int,
              settings: list[str]) -> ChildProcess:
    """``fedmed run --coordinator`` as its own process (as an operator would run it)."""
    argv = [
        sys.executable, "-m", "fedmed.cli", "run", str(HEART),
        "--coordinator", federation.address, "--kit", str(federation.kits),
        "--set", f"sites={sites}", "--out", out, "--rounds", str(rounds),
        *[f"--set={item}" for item in ["secagg=false", *settings]],
    ]  # fmt: skip
    log = federation.root / f"{out.replace('/', '-')}.log"
    return ChildProcess("fedmed-run", argv, log).start()


def restart(federation: LoopbackFederation, site: str, patience: float = 150.0) -> int:
    """Start a killed node again; how many starts the coordinator refused first.

    Flower 1.42's SuperLink activates a node only while it counts it offline, and it
    counts a node online until two heartbeat intervals (2 × 30 s) after its last heartbeat:
    a node restarted right after a crash is refused with error 2004, which ``fedmed node
    start`` reports as an unregistered key. An operator waits a minute; this retries.
    """
    deadline = time.monotonic() + patience
    refused = 0
    while True:
        federation.stop_node(site)  # the killed node's orphaned worker, by PID
        try:
            federation.start_node(site)
            return refused
        except NodeNotRegistered:
            refused += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(5.0)


def deployed_groups(federation: LoopbackFederation) -> dict[str, list[int]]:
    coordinator = federation.coordinator
    groups = {"coordinator": tree(coordinator.process.pid if coordinator and coordinator.process
                                  else None)}  # fmt: skip
    for site in federation.sites:
        node = federation.nodes.get(site)
        alive = node is not None and node.running() and node.process is not None
        groups[f"node {site}"] = tree(node.process.pid if alive else None)  # type: ignore[union-attr]
    return groups


def coordinator_status(state: Path) -> dict:
    """``fedmed coordinator status`` printed, and its ``--json`` document returned."""
    code = fedmed(["coordinator", "status", "--home", str(state)])
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        fedmed(["coordinator", "status", "--home", str(state), "--json"])
    print(f"(exit {code}: .venv/bin/fedmed coordinator status --home {state})", flush=True)
    return json.loads(captured.getvalue())


def kill_serverapp(federation: LoopbackFederation, args: argparse.Namespace) -> None:
    """A second run whose ServerApp is killed outright after round 2; then the coordinator's
    reconciliation, and the status before and after it."""
    assert federation.coordinator is not None and federation.coordinator.process is not None
    state = federation.coordinator.layout.root
    run = submitter(federation, args.sites, "runs/killed", 50, args.set)
    sampler = RoundSampler(state / "runs" / "killed", dict)
    sampler.start()
    try:
        if not sampler.wait_for(2, run.running):
            raise SystemExit(f"the second run ended before round 2: {run.tail(6)}")
        apps = [pid for pid in descendants(federation.coordinator.process.pid)
                if b"flwr-serverapp" in Path(f"/proc/{pid}/cmdline").read_bytes()]  # fmt: skip
        for pid in apps:
            os.kill(pid, signal.SIGKILL)
        print(f"\nServerApp of the second run killed (SIGKILL, pid {apps}) after round "
              f"{sampler.round}; status before the coordinator reconciles:", flush=True)
    finally:
        sampler.stop()
    time.sleep(1.0)
    coordinator_status(state)
    marked = federation.coordinator.reconcile_runs(ask_when_unsure=False)
    print(f"reconciled (as fedmed coordinator start does every few seconds): "
          f"{[(m.run_dir, m.status) for m in marked]}", flush=True)
    run.wait_for({}, 120)
    print(f"its submitter ended: {not run.running()} ({' | '.join(run.tail(2))})", flush=True)
    run.stop()


def part_deploy(args: argparse.Namespace) -> bool:
    sites = args.sites.split(",")
    with tempfile.TemporaryDirectory(prefix="fedmed-soak-") as folder, LoopbackFederation(
        Path(folder), "heart", sites, HEART_DATA
    ) as federation:
        assert federation.coordinator is not None
        state = federation.coordinator.layout.root
        started = time.perf_counter()
        run = submitter(federation, args.sites, "runs/soak", args.rounds, args.set)
        sampler = RoundSampler(state / "runs" / "soak", lambda: deployed_groups(federation))
        sampler.start()
        down: dict[str, list[tuple[int, int]]] = {site: [] for site in sites}  # (killed, back)
        kills = range(args.kill_every, args.rounds, args.kill_every) if args.kill_every else []
        for number, server_round in enumerate(kills):
            if not sampler.wait_for(server_round, run.running):
                break
            site = sites[number % len(sites)]
            node = federation.nodes[site]
            assert node.process is not None
            node.process.kill()  # a crash, not a clean stop
            killed, began = sampler.round, time.perf_counter()
            refused = restart(federation, site)
            down[site].append((killed, sampler.round))
            print(f"round {server_round}: {site} killed and restarted in "
                  f"{time.perf_counter() - began:.1f} s ({refused} start(s) refused while the "
                  f"coordinator still counted it online); back after round {sampler.round}",
                  flush=True)
        run.wait_for({}, 10**6)
        elapsed = time.perf_counter() - started
        sampler.stop()
        code = run.returncode()
        document = json.loads((state / "runs" / "soak" / "metrics.json").read_text())
        joined = [len(r.get("fit", {})) for r in document["rounds"]]
        stamps = [r["aggregated_at"] for r in document["rounds"] if "aggregated_at" in r]
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)] or [0.0]
        print(f"soak deploy: heart, sites {args.sites}, {len(document['rounds'])} of "
              f"{args.rounds} rounds in {elapsed:.0f} s (median {statistics.median(gaps):.2f} "
              f"s/round, longest {max(gaps):.1f} s; submitter exit {code}, run status "
              f"{document.get('status')}); sites trained per round: min {min(joined)}, all "
              f"{len(sites)} in {joined.count(len(sites))} rounds", flush=True)  # fmt: skip
        if code != 0:
            print("the submitter said: " + " | ".join(run.tail(6)), flush=True)
        if args.serverapp_kill:
            kill_serverapp(federation, args)
        print("\nstatus at the end:", flush=True)
        status = coordinator_status(state)
    live = [r["run_dir"] for r in status["runs"] if r["live"]]
    live += [str(r["run-id"]) for r in status["flower-only-runs"] if r["status"] in
             ("pending", "starting", "running")]  # fmt: skip
    print(f"runs shown running at the end: {live or 'none'}")
    rows = []
    coordinator = stats("coordinator", sampler.samples.get("coordinator", {}),
                        set(range(1, args.warmup + 1)))  # fmt: skip
    rows += [coordinator] if coordinator else []
    for site in sites:
        # left out: the first warm-up, and from each kill to the warm-up after its restart
        skipped = set(range(1, args.warmup + 1)) | {
            r for killed, back in down[site] for r in range(killed + 1, back + args.warmup + 1)
        }
        row = stats(f"node {site}", sampler.samples.get(f"node {site}", {}), skipped)
        rows += [row] if row else []
    save(args.samples, "deploy", sampler.samples, rounds=args.rounds, warmup=args.warmup,
         down=down)  # fmt: skip
    flat = report(rows, args.warmup, args.limit)
    return flat and not live and code == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sim", "deploy"), required=True)
    parser.add_argument("--rounds", type=int, help="rounds (default: sim 500, deploy 100)")
    parser.add_argument("--kill-every", type=int, default=20,
                        help="deploy: kill and restart one node every N rounds (0: never)")
    parser.add_argument("--warmup", type=int,
                        help="rounds left out after each start (default: a tenth of the rounds)")
    parser.add_argument("--limit", type=float, default=10.0, help="flat: range within this %%")
    parser.add_argument("--sites", default="cleveland,hungary,switzerland")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-serverapp-kill", dest="serverapp_kill", action="store_false",
                        help="deploy: skip the second run whose ServerApp is killed")
    parser.add_argument("--samples", type=Path, help="write every sample to this JSON file")
    parser.add_argument("--python-heap", action="store_true",
                        help="sim: also trace the coordinator's Python heap (tracemalloc; "
                        "slower, and its records add to the RSS) and print what grew")
    parser.add_argument("--heap-child", help=argparse.SUPPRESS)
    args = parser.parse_args()  # fmt: skip
    args.rounds = args.rounds or (500 if args.part == "sim" else 100)
    args.warmup = args.warmup if args.warmup is not None else max(1, args.rounds // 10)
    if args.rounds <= args.warmup + 1:
        parser.error("--rounds must exceed the warm-up by at least 2")
    if args.heap_child:
        return heap_child(args)
    ok = part_sim(args) if args.part == "sim" else part_deploy(args)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
