"""Deployment and secure-aggregation overhead, printed as ratios.

Two measurements, side by side in one run:

1. ``deploy``: seconds per round of the same federation (default: heart, three
   sites, the folder's settings) on Flower's Simulation Engine and deployed —
   a real SuperLink and one SuperNode per site on loopback with TLS and node
   authentication (:class:`fedmed.deploy.loopback.LoopbackFederation`). Per-round
   time is the mean gap between successive aggregations recorded in the run's
   ``metrics.json`` (:func:`fedmed.outputs.seconds_per_round`), so engine and
   process start-up are excluded. ``--deploy-secagg`` adds a deployed SecAgg+ run.
2. ``secagg``: SecAgg+ vs plain FedAvg in simulation, a ~1M-parameter MLP trained
   one local epoch per round at each node, at 3 and 10 nodes. The coordinator
   uses fedmed's own SecAgg+ workflow (:func:`fedmed.server.secagg.secagg_workflow`)
   and the node fedmed's conditional mod (:mod:`fedmed.clients.secagg`). Per-round
   time is taken between successive aggregations (start-up excluded). It also
   prints the largest difference between the two final models (SecAgg+
   quantizes, so they agree to ~1e-5, not exactly).

Run: ``.venv/bin/python bench/deploy_overhead.py [--part deploy|secagg|all]
[--rounds 3] [--sim-rounds 21] [--nodes 3,10] [--secagg-rounds 4] [--secagg-shares S]
[--deploy-secagg]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from fedmed import outputs
from fedmed.clients.secagg import secagg_when_requested
from fedmed.clients.site_home import SiteHome
from fedmed.commands.deploy import deployment_settings
from fedmed.commands.run import federation_config
from fedmed.config import FederationConfig
from fedmed.deploy.kit import find_ca_cert
from fedmed.deploy.loopback import LoopbackFederation
from fedmed.deploy.submit import submit
from fedmed.privacy.policy import Policy
from fedmed.server.secagg import secagg_workflow
from fedmed.simulation import _quiet_flower, run_simulation
from fedmed.state import ray_temp_dir

REPO = Path(__file__).resolve().parents[1]
HEART_DATA = REPO / "fedmed" / "data" / "uci_heart"


# --- 1. deployment vs simulation ------------------------------------------------------------


def seconds_per_round(run_dir: Path) -> float:
    """Wall time between successive aggregations, from the run's ``metrics.json``."""
    return outputs.seconds_per_round(json.loads((run_dir / "metrics.json").read_text()))


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


def simulated(args: argparse.Namespace, tmp: Path) -> float:
    homes = tmp / "sim-homes"
    for site in args.sites:
        SiteHome.open(homes / site, site, "heart")
        lift_budget(homes / site)
    config = dataclasses.replace(
        federation_settings(args, args.sim_rounds),
        run_dir=str(tmp / "sim-run"),
        sites_home=str(homes),
        secagg=False,
    )
    return seconds_per_round(run_simulation(config))


def deployed(args: argparse.Namespace, tmp: Path, secagg: bool) -> float:
    name = f"deploy-{'secagg' if secagg else 'plain'}"
    with LoopbackFederation(tmp / name, "heart", args.sites, HEART_DATA) as federation:
        for node in federation.nodes.values():  # homes were created from the kits at start
            lift_budget(node.site_home)
        config = dataclasses.replace(federation_settings(args, args.rounds), secagg=secagg)
        settings = deployment_settings(config, Path(name), name)
        outcome = submit(
            args.federation, settings, federation.address, find_ca_cert(federation.kits), name
        )
        if not outcome.status.endswith("completed"):
            raise RuntimeError(f"deployed run {outcome.run_id}: {outcome.status}")
        assert federation.coordinator is not None
        return seconds_per_round(federation.coordinator.layout.root / name)


def part_deploy(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulated(args, Path(tmp))
        print(f"simulation, {len(args.sites)} sites: {sim:.2f} s/round", flush=True)
        plain = deployed(args, Path(tmp), secagg=False)
        print(f"deployment (TLS, node auth), plain: {plain:.2f} s/round", flush=True)
        print(f"ratio deployment/simulation: {plain / sim:.1f}x", flush=True)
        if args.deploy_secagg:
            secure = deployed(args, Path(tmp), secagg=True)
            print(f"deployment with SecAgg+: {secure:.2f} s/round", flush=True)
            print(f"ratio deployed SecAgg+/plain: {secure / plain:.2f}x", flush=True)


# --- 2. SecAgg+ vs plain in simulation, 1M parameters ---------------------------------------


def mlp() -> torch.nn.Module:
    """1,011,010 parameters."""
    return torch.nn.Sequential(
        torch.nn.Linear(1000, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10)
    )


class MlpClient(NumPyClient):
    """One local epoch of SGD on 256 synthetic examples (node-specific)."""

    def __init__(self, node: int) -> None:
        generator = torch.Generator().manual_seed(node)
        self.x = torch.randn(256, 1000, generator=generator)
        self.y = torch.randint(0, 10, (256,), generator=generator)

    def fit(self, parameters, config):  # noqa: ANN001, ANN201
        model = mlp()
        model.load_state_dict(
            {k: torch.from_numpy(v) for k, v in zip(model.state_dict(), parameters, strict=True)}
        )
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for start in range(0, len(self.x), 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(
                model(self.x[start : start + 32]), self.y[start : start + 32]
            )
            loss.backward()
            optimizer.step()
        weights = [v.detach().numpy().copy() for v in model.state_dict().values()]
        return weights, len(self.x), {}


def mlp_round_seconds(
    nodes: int, secagg: bool, rounds: int, num_shares: float = 1.0
) -> tuple[float, list[np.ndarray]]:
    """Seconds per round (between aggregations) and the final weights."""
    from flwr.simulation import run_simulation as flower_simulation

    marks: list[float] = []
    final: dict[str, list[np.ndarray]] = {}

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
        DefaultWorkflow(fit_workflow=secagg_workflow(config))(grid, legacy)

    client = ClientApp(
        client_fn=lambda context: MlpClient(int(context.node_config["partition-id"])).to_client(),
        mods=[secagg_when_requested],
    )
    with _quiet_flower():
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
    return (marks[-1] - marks[0]) / (len(marks) - 1), final["weights"]


def part_secagg(args: argparse.Namespace) -> None:
    print(f"model: {sum(p.numel() for p in mlp().parameters()):,} parameters", flush=True)
    for nodes in args.nodes:
        shares = min(args.secagg_shares, nodes) if args.secagg_shares > 1 else args.secagg_shares
        plain, plain_weights = mlp_round_seconds(nodes, False, args.secagg_rounds)
        secure, secure_weights = mlp_round_seconds(nodes, True, args.secagg_rounds, shares)
        gap = max(
            float(np.max(np.abs(a - b))) for a, b in zip(plain_weights, secure_weights, strict=True)
        )
        print(
            f"{nodes:>2} nodes: plain {plain:.2f} s/round, SecAgg+ (secagg-num-shares "
            f"{shares:g}) {secure:.2f} s/round, "
            f"ratio {secure / plain:.2f}x (goal <= 2x at 10); max |Δw| {gap:.1e}",
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
    parser.add_argument("--nodes", default="3,10")
    parser.add_argument("--secagg-rounds", type=int, default=4)
    parser.add_argument(
        "--secagg-shares",
        type=float,
        default=FederationConfig.secagg_num_shares,
        help="secagg-num-shares: <= 1 a fraction (1: every node, SecAgg's full graph), "
        "> 1 a count of neighbours (SecAgg+'s sparse graph; capped at the node count)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    args.sites = [s for s in args.sites.split(",") if s]
    args.nodes = [int(n) for n in args.nodes.split(",") if n]
    if args.part in ("deploy", "all"):
        part_deploy(args)
    if args.part in ("secagg", "all"):
        part_secagg(args)


if __name__ == "__main__":
    main()
