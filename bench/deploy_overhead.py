"""Deployment and secure-aggregation overhead, printed as ratios.

Two measurements, side by side in one run:

1. ``deploy``: seconds per round of the same federation (default: heart, three
   sites, DP, the folder's settings) on Flower's Simulation Engine and deployed — a
   real SuperLink and one SuperNode per site on loopback with TLS and node
   authentication, each node with fedmed's warm ClientApp worker
   (:class:`fedmed.deploy.loopback.LoopbackFederation`), without evaluation (only
   after the last round) and with evaluation after every round. Per-round time is the
   median gap between successive aggregations recorded in the run's ``metrics.json``
   (engine and process start-up excluded). For each deployed run it prints where a
   round's time goes: per exchange (``fit``, ``evaluate``), the coordinator's wait
   (``rounds[].exchange_seconds``) split into the slowest node's work — pull the
   message, load the app, run it, push the reply, from each node's task lines
   (:class:`fedmed.deploy.warm_worker.TaskClock`) — and the rest (polling, transport,
   SuperLink); and the coordinator's own time between exchanges.
   ``--deploy-secagg`` adds deployed SecAgg+ runs; ``--memory-state`` runs the coordinator
   with its SuperLink state in memory (``fedmed coordinator start --memory-state``).
2. ``secagg``: SecAgg+ vs plain FedAvg **in simulation** (Flower's Simulation Engine,
   as the deployment issue's goal says), a 1,011,010-parameter MLP trained one local
   epoch per round at each node, at 3 and 10 nodes, with SecAgg's full graph
   (``secagg-num-shares 1``, fedmed's default) and SecAgg+'s sparse one (5
   neighbours). The coordinator uses fedmed's own SecAgg+ workflow
   (:func:`fedmed.server.secagg.secagg_workflow`) and the node fedmed's conditional
   mod (:mod:`fedmed.clients.secagg`). Per-round time is taken between successive
   aggregations (start-up excluded). Plain and SecAgg+ run back to back ``--repeat``
   times and the median ratio is printed, because other work on a shared machine
   drifts between runs. It also prints each SecAgg+ stage's time on the coordinator,
   the largest difference between the two final models (SecAgg+ quantizes, so they
   agree to ~1e-5, not exactly) and, with ``--profile-nodes``, where a node's time
   goes (cProfile of every node message).

Run: ``.venv/bin/python bench/deploy_overhead.py [--part deploy|secagg|all]
[--rounds 3] [--sim-rounds 21] [--deploy-secagg] [--memory-state] [--nodes 3,10] [--secagg-rounds 6]
[--secagg-shares 1,5] [--repeat 3] [--local-epochs 1] [--profile-nodes]``.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import logging
import os
import pstats
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Context, Message, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from fedmed.clients.secagg import secagg_when_requested
from fedmed.clients.site_home import SiteHome
from fedmed.commands.deploy import deployment_settings
from fedmed.commands.federation import federation_config
from fedmed.config import FederationConfig
from fedmed.deploy.kit import find_ca_cert
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.submit import submit
from fedmed.privacy.policy import Policy
from fedmed.server.secagg import DropoutTolerantSecAggPlus, secagg_workflow
from fedmed.simulation import _messages_to_log, run_simulation
from fedmed.state import ray_temp_dir

REPO = Path(__file__).resolve().parents[1]
HEART_DATA = REPO / "fedmed" / "data" / "uci_heart"


# --- 1. deployment vs simulation ------------------------------------------------------------


def round_gaps(run_dir: Path) -> list[float]:
    """Wall seconds between successive aggregations, from the run's ``metrics.json``."""
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    stamps = [r["aggregated_at"] for r in rounds if "aggregated_at" in r]
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def seconds_per_round(run_dir: Path) -> float:
    """Median seconds per round (start-up excluded: the first round has no gap before it)."""
    return statistics.median(round_gaps(run_dir))


def federation_settings(args: argparse.Namespace, rounds: int) -> FederationConfig:
    namespace = argparse.Namespace(
        set=[f"sites={','.join(args.sites)}", *args.set],
        out=None, rounds=rounds, strategy=None, seed=None, sites_home=None,
        dp=None, epsilon=None, client_dp=None,
    )  # fmt: skip
    return federation_config(args.federation, namespace)


def lift_budget(home: Path) -> None:
    """No ε cap in this site home: the benchmark measures time, not budgets (a capped home
    would start refusing after a few benchmark runs)."""
    policy = Policy(epsilon=float("inf"), min_noise_multiplier=0.0)
    (home / "policy.toml").write_text(policy.to_toml(), encoding="utf-8")


def simulated(args: argparse.Namespace, tmp: Path, evaluate_every: int) -> float:
    homes = tmp / f"sim-homes-{evaluate_every}"
    for site in args.sites:
        SiteHome.open(homes / site, site, "heart")
        lift_budget(homes / site)
    config = dataclasses.replace(
        federation_settings(args, args.sim_rounds),
        run_dir=str(tmp / f"sim-run-{evaluate_every}"),
        sites_home=str(homes),
        secagg=False,
        evaluate_every=evaluate_every,
    )
    return seconds_per_round(run_simulation(config))


@dataclasses.dataclass
class Deployed:
    """A finished deployed run: its run directory and its nodes' logs."""

    run_dir: Path
    node_logs: dict[str, Path]


def deployed(args: argparse.Namespace, tmp: Path, secagg: bool, evaluate_every: int) -> Deployed:
    name = f"deploy-{'secagg' if secagg else 'plain'}-{evaluate_every}"
    with LoopbackFederation(tmp / name, "heart", args.sites, HEART_DATA,
                            memory_state=args.memory_state) as federation:
        for node in federation.nodes.values():  # homes were created from the kits at start
            lift_budget(node.site_home)
        config = dataclasses.replace(
            federation_settings(args, args.rounds), secagg=secagg, evaluate_every=evaluate_every
        )
        settings = deployment_settings(config, Path(name), name)
        outcome = submit(
            args.federation, settings, federation.address, find_ca_cert(federation.kits), name
        )
        if not outcome.status.endswith("completed"):
            raise RuntimeError(f"deployed run {outcome.run_id}: {outcome.status}")
        assert federation.coordinator is not None
        logs = {site: node.layout.log for site, node in federation.nodes.items()}
        return Deployed(federation.coordinator.layout.root / name, logs)


TASK_LINE = re.compile(r"fedmed task (\S+) round=(\S+) status=\S+ (.*)$")


def node_steps(logs: dict[str, Path]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """{(message type, round): {site: {step: seconds}}} from the warm workers' task lines
    (:class:`fedmed.deploy.warm_worker.TaskClock`), SecAgg+'s several tasks a round summed."""
    found: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for site, log_path in logs.items():
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            match = TASK_LINE.search(line)
            if not match:
                continue
            kind, group, timings = match.groups()
            steps = found.setdefault((kind, group), {}).setdefault(site, {})
            for pair in timings.split():
                step, seconds = pair.split("=")
                steps[step] = steps.get(step, 0.0) + float(seconds)
    return found


def exchange_breakdown(exchange: str, waits: dict[int, float],
                       steps: dict[str, dict[str, float]] | None) -> str:
    """One exchange's median wait, split into the slowest node's steps and the rest."""
    median_wait = statistics.median(waits.values())
    if not steps:
        return f"  {exchange} exchange: median {median_wait:.2f} s"
    at_node = {n: statistics.median([s.get(n, 0.0) for s in steps.values()])
               for n in sorted({n for s in steps.values() for n in s})}
    parts = ", ".join(f"{n} {v:.2f}" for n, v in at_node.items())
    node_total = sum(at_node.values())
    return (f"  {exchange} exchange: median {median_wait:.2f} s = slowest node "
            f"{node_total:.2f} s ({parts}) + {median_wait - node_total:.2f} s polling, "
            "transport and SuperLink")


def print_breakdown(label: str, run: Deployed) -> float:
    """Median round and, per exchange, where its time went; returns the median round.

    The gap between two aggregations is the previous round's evaluation (when it had
    one), this round's fit exchange and the coordinator's own work around them. The last
    round's evaluation also writes each site's explanations of the final model: left out.
    """
    rounds = json.loads((run.run_dir / "metrics.json").read_text())["rounds"]
    last = rounds[-1]["round"]
    waits = {kind: {r["round"]: r["exchange_seconds"][kind] for r in rounds
                    if kind in r.get("exchange_seconds", {})} for kind in ("fit", "evaluate")}
    gaps = round_gaps(run.run_dir)
    median_round = statistics.median(gaps)
    print(f"{label}: median {median_round:.2f} s/round (min {min(gaps):.2f}, max "
          f"{max(gaps):.2f}; {len(gaps)} rounds after the first)", flush=True)
    tasks = node_steps(run.node_logs)
    for exchange, message_type in (("fit", "train"), ("evaluate", "evaluate")):
        timed = {r: w for r, w in waits[exchange].items() if r > 1 and r != last}
        if not timed:
            continue
        slowest = {}  # per round, the node whose work took longest: the exchange waits on it
        for r in timed:
            per_site = tasks.get((message_type, str(r)), {})
            if per_site:
                slowest[r] = max(per_site.values(), key=lambda s: sum(s.values()))
        print(exchange_breakdown(exchange, timed, slowest), flush=True)
    own = [gap - waits["fit"].get(r, 0.0) - waits["evaluate"].get(r - 1, 0.0)
           for r, gap in zip(range(2, last + 1), gaps, strict=False)]
    print(f"  coordinator between exchanges (aggregate, checkpoint, audit, report): median "
          f"{statistics.median(own):.2f} s", flush=True)
    return median_round


def part_deploy(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for evaluate_every, label in ((0, "no evaluation"), (1, "evaluation every round")):
            sim = simulated(args, Path(tmp), evaluate_every)
            print(f"simulation, {len(args.sites)} sites, {label}: {sim:.2f} s/round", flush=True)
            plain = print_breakdown(
                f"deployed (TLS, node auth, DP), {label}, plain",
                deployed(args, Path(tmp), False, evaluate_every),
            )
            print(f"ratio deployment/simulation, {label}: {plain / sim:.1f}x", flush=True)
            if args.deploy_secagg:
                secure = print_breakdown(
                    f"deployed, {label}, SecAgg+",
                    deployed(args, Path(tmp), True, evaluate_every),
                )
                print(f"ratio deployed SecAgg+/plain, {label}: {secure / plain:.2f}x",
                      flush=True)


# --- 2. SecAgg+ vs plain in simulation, 1M parameters ---------------------------------------

STAGES = {
    "setup_stage": "setup",
    "share_keys_stage": "share-keys",
    "collect_masked_vectors_stage": "masked-vectors",
    "unmask_stage": "unmask",
}


def mlp() -> torch.nn.Module:
    """1,011,010 parameters."""
    return torch.nn.Sequential(
        torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10)
    )


class MlpClient(NumPyClient):
    """``epochs`` local epochs of SGD on 256 synthetic examples (node-specific)."""

    def __init__(self, node: int, epochs: int) -> None:
        generator = torch.Generator().manual_seed(node)
        self.x = torch.randn(256, 1000, generator=generator)
        self.y = torch.randint(0, 10, (256,), generator=generator)
        self.epochs = epochs

    def fit(self, parameters, config):  # noqa: ANN001, ANN201
        model = mlp()
        model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in zip(model.state_dict(), parameters, strict=True)}
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(self.epochs):
            for start in range(0, len(self.x), 32):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    model(self.x[start : start + 32]), self.y[start : start + 32]
                )
                loss.backward()
                optimizer.step()
        weights = [v.detach().numpy().copy() for v in model.state_dict().values()]
        return weights, len(self.x), {}


@dataclasses.dataclass
class MlpRun:
    """One simulated run: seconds per round, the final weights and, with SecAgg+, the
    coordinator's wall time in each stage per round (first round, with start-up, left out)."""

    seconds: float
    weights: list[np.ndarray]
    stages: dict[str, float]


def timed_stages(workflow: DropoutTolerantSecAggPlus, times: dict[str, list[float]]) -> None:
    """Record each SecAgg+ stage's wall time (instance attributes shadow the methods the
    workflow's ``__call__`` looks up)."""
    for method, name in STAGES.items():
        stage = getattr(workflow, method)

        def timed(grid, context, state, stage=stage, name=name):  # noqa: ANN001, ANN202
            started = time.perf_counter()
            try:
                return stage(grid, context, state)
            finally:
                times.setdefault(name, []).append(time.perf_counter() - started)

        setattr(workflow, method, timed)


def profiled(mod: Mod, folder: Path) -> Mod:
    """``mod`` under cProfile, one stats file per message (Ray runs nodes in other processes).

    Round 1 is left out, as from the round times: it pays one-off imports (the first
    ``torch.optim`` step imports ``torch._dynamo``, seconds per node process).
    """

    def run(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if message.metadata.group_id == "1":
            return mod(message, context, call_next)
        profile = cProfile.Profile()
        profile.enable()
        try:
            return mod(message, context, call_next)
        finally:
            profile.disable()
            profile.dump_stats(folder / f"{os.getpid()}-{time.monotonic_ns()}.prof")

    return run


def mlp_run(
    nodes: int, secagg: bool, rounds: int, num_shares: float, epochs: int, profile: Path | None
) -> MlpRun:
    """One run of the MLP federation on Flower's Simulation Engine (``nodes`` SuperNodes)."""
    from flwr.simulation import run_simulation as flower_simulation

    marks: list[float] = []
    final: dict[str, list[np.ndarray]] = {}
    stage_times: dict[str, list[float]] = {}

    class Timed(FedAvg):
        def aggregate_fit(self, server_round, results, failures):  # noqa: ANN001, ANN201
            parameters, metrics = super().aggregate_fit(server_round, results, failures)
            marks.append(time.perf_counter())
            final["weights"] = parameters_to_ndarrays(parameters)
            return parameters, metrics

    torch.manual_seed(0)
    initial = [v.numpy() for v in mlp().state_dict().values()]
    config = FederationConfig(secagg=secagg, min_nodes=nodes, secagg_num_shares=num_shares)
    config.validate()
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = Timed(
            fraction_evaluate=0.0, min_fit_clients=nodes, min_available_clients=nodes,
            initial_parameters=ndarrays_to_parameters(initial),
        )  # fmt: skip
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
        )
        workflow = secagg_workflow(config)
        if workflow is not None:
            timed_stages(workflow, stage_times)
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

    mod = secagg_when_requested if profile is None else profiled(secagg_when_requested, profile)
    client = ClientApp(
        client_fn=lambda context: MlpClient(
            int(context.node_config["partition-id"]), epochs
        ).to_client(),
        mods=[mod],
    )
    with _messages_to_log(Path(os.devnull)):  # the console: the bench's figures only
        flower_simulation(
            server_app=server,
            client_app=client,
            num_supernodes=nodes,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": min(nodes, os.cpu_count() or 1),
                    "_temp_dir": str(ray_temp_dir()),
                    "include_dashboard": False,
                    "logging_level": logging.ERROR,
                },
            },
        )
    stages = {name: statistics.mean(t[1:]) for name, t in stage_times.items() if len(t) > 1}
    return MlpRun((marks[-1] - marks[0]) / (len(marks) - 1), final["weights"], stages)


# Where a node's time goes in a SecAgg+ round: its training, and the parts of Flower's
# secaggplus_mod that training-free FedAvg does not have (file, function).
NODE_WORK = {
    "training": ("deploy_overhead.py", "fit"),
    "quantize": ("quantization.py", "quantize"),
    "masks (PRG)": ("secaggplus_utils.py", "pseudo_rand_gen"),
    "share-keys (Shamir, encrypt)": ("secaggplus_mod.py", "_share_keys"),
}
WHOLE_MOD = ("secaggplus_mod.py", "secaggplus_mod")


def node_profile(folder: Path, nodes: int, rounds: int) -> str:
    """Milliseconds per node and round in each of :data:`NODE_WORK` (cumulative time), and
    the rest of the SecAgg+ mod (decrypting shares, adding masks, serialising)."""
    files = sorted(folder.glob("*.prof"))
    stats = pstats.Stats(str(files[0]))
    for extra in files[1:]:
        stats.add(str(extra))
    wanted = {**NODE_WORK, "whole": WHOLE_MOD}
    spent = dict.fromkeys(wanted, 0.0)
    for (path, _, function), (*_, total, _) in stats.stats.items():  # type: ignore[attr-defined]
        for name, (file, name_in_file) in wanted.items():
            if path.endswith(file) and function == name_in_file:
                spent[name] += total
    per = 1000.0 / (nodes * (rounds - 1))  # round 1 was not profiled
    other = spent.pop("whole") - sum(spent.values())
    parts = [f"{name} {seconds * per:.0f}" for name, seconds in spent.items()]
    return ", ".join([*parts, f"other SecAgg+ {other * per:.0f}"])


def part_secagg(args: argparse.Namespace) -> None:
    """SecAgg+ vs plain, each pair run back to back (a shared machine drifts), the median
    ratio over ``--repeat`` pairs; SecAgg+'s stage times and, with ``--profile-nodes``,
    where a node's time goes."""
    print(f"model: {sum(p.numel() for p in mlp().parameters()):,} parameters, "
          f"{args.local_epochs} local epoch(s) of 256 examples per round", flush=True)  # fmt: skip
    for nodes in args.nodes:
        # a count of neighbours >= the node count is the full graph, like 1.0
        all_shares = sorted({1.0 if s >= nodes else s for s in args.secagg_shares})
        ratios: dict[float, list[float]] = {shares: [] for shares in all_shares}
        for repeat in range(1, args.repeat + 1):
            plain = mlp_run(nodes, False, args.secagg_rounds, 1.0, args.local_epochs, None)
            for shares in all_shares:
                with tempfile.TemporaryDirectory() as profile:
                    folder = Path(profile) if args.profile_nodes else None
                    rounds = args.secagg_rounds
                    secure = mlp_run(nodes, True, rounds, shares, args.local_epochs, folder)
                    profiled_work = node_profile(folder, nodes, rounds) if folder else ""
                ratio = secure.seconds / plain.seconds
                ratios[shares].append(ratio)
                gap = max(
                    float(np.max(np.abs(a - b)))
                    for a, b in zip(plain.weights, secure.weights, strict=True)
                )
                stages = ", ".join(f"{k} {v:.2f}" for k, v in secure.stages.items())
                print(
                    f"{nodes:>2} nodes [{repeat}/{args.repeat}]: plain {plain.seconds:.2f} "
                    f"s/round, SecAgg+ (secagg-num-shares {shares:g}) {secure.seconds:.2f} "
                    f"s/round, ratio {ratio:.2f}x; max |Δw| {gap:.1e}\n"
                    f"    SecAgg+ stages (s/round): {stages}",
                    flush=True,
                )
                if profiled_work:
                    print(f"    node work (ms per node and round, profiled): {profiled_work}")
        for shares, values in ratios.items():
            print(
                f"{nodes:>2} nodes, secagg-num-shares {shares:g}: median ratio SecAgg+/plain "
                f"{statistics.median(values):.2f}x over {len(values)} pair(s) "
                f"(goal <= 2x at 10 nodes)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("deploy", "secagg", "all"), default="all")
    parser.add_argument("--federation", type=Path, default=REPO / "examples" / "heart")
    parser.add_argument("--sites", default="cleveland,hungary,switzerland")
    parser.add_argument("--rounds", type=int, default=3, help="deployed rounds")
    parser.add_argument("--sim-rounds", type=int, default=21, help="simulated rounds")
    parser.add_argument("--deploy-secagg", action="store_true")
    parser.add_argument("--memory-state", action="store_true",
                        help="the deployed coordinator keeps its SuperLink state in memory "
                        "(fedmed coordinator start --memory-state)")
    parser.add_argument("--nodes", default="3,10")
    parser.add_argument("--secagg-rounds", type=int, default=6)
    parser.add_argument(
        "--secagg-shares",
        default="1,5",
        help="comma-separated secagg-num-shares values: <= 1 a fraction (1: every node, "
        "SecAgg's full graph, fedmed's default), > 1 a count of neighbours (SecAgg+'s sparse "
        "graph; capped at the node count)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="plain/SecAgg+ pairs per setting")
    parser.add_argument("--local-epochs", type=int, default=1, help="MLP epochs per round")
    parser.add_argument(
        "--profile-nodes",
        action="store_true",
        help="cProfile every node message of the SecAgg+ runs (slows them: read the split, "
        "take the ratio from a run without it)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    args.sites = [s for s in args.sites.split(",") if s]
    args.nodes = [int(n) for n in args.nodes.split(",") if n]
    args.secagg_shares = [float(s) for s in args.secagg_shares.split(",") if s]
    if args.part in ("deploy", "all"):
        part_deploy(args)
    if args.part in ("secagg", "all"):
        part_secagg(args)


if __name__ == "__main__":
    main()
