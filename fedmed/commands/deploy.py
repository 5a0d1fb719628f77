"""Deployment commands: ``fedmed provision``, ``fedmed coordinator ...``, ``fedmed node start``.

Each long-running command stays in the foreground, copies its Flower process's
log to the console and to a file in its state folder, and stops every process it
started on Ctrl-C or SIGTERM. ``fedmed run FEDERATION --coordinator ADDR --kit DIR``
(see :func:`run_on_coordinator`) submits a run to a coordinator started here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from fedmed.commands.federation import federation_config, privacy_table
from fedmed.config import ConfigValue, FederationConfig, load_federation
from fedmed.deploy.errors import CoordinatorUnreachable, DeployError, ProcessFailed
from fedmed.deploy.kit import (
    find_ca_cert,
    load_coordinator_kit,
    load_site_kit,
)
from fedmed.deploy.node import DEFAULT_RUNTIME_PORT
from fedmed.deploy.processes import sigterm_interrupts
from fedmed.deploy.registry import REGISTRY_FILE
from fedmed.deploy.supernode_entry import DEFAULT_POLL_SECONDS
from fedmed.errors import FedmedError
from fedmed.outputs import format_epsilon
from fedmed.state import site_home_path, state_root

if TYPE_CHECKING:
    from fedmed.deploy.coordinator import Coordinator
    from fedmed.deploy.runs import FlowerView, RunState, SiteState

console = Console(highlight=False, soft_wrap=True)


ACCESS_LOG = re.compile(r"uvicorn\.access|\] \"(GET|POST) /|^INFO:\s+127\.0\.0\.1:\d+ - ")


def _echo(quiet: bool) -> Callable[[str], None] | None:
    """Copy a Flower process's lines to the console, minus HTTP access lines (one per
    node poll, every few seconds; they stay in the log file)."""
    if quiet:
        return None

    def show(line: str) -> None:
        if line.strip() and not ACCESS_LOG.search(line):
            print(line, flush=True)

    return show


# --- provision ------------------------------------------------------------------------------


def cmd_provision(args: argparse.Namespace) -> int:
    from fedmed.deploy.provision import add_site, provision, rotate_node_key

    if args.add_site:
        credentials = [add_site(args.out, args.add_site)]
        action = f"added site {args.add_site}"
    elif args.rotate_key:
        credentials = [rotate_node_key(args.out, args.rotate_key)]
        action = f"new node key for {args.rotate_key}"
    else:
        if not args.federation or not args.sites:
            raise DeployError("provision needs --federation and --sites (or --add-site)")
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
        tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) or ("*",)
        credentials = provision(args.out, args.federation, sites, args.address, tasks)
        action = f"provisioned federation {args.federation}"
    console.print(f"[bold]fedmed[/bold]: {action} in {Path(args.out).resolve()}")
    for item in credentials:
        console.print(f"  {item.site}: node key {item.node_key}")
        if item.audit_key:
            console.print(f"  {' ' * len(item.site)}  audit key {item.audit_key}")
    console.print(
        "Ship each sites/<site>/ folder to its hospital (then delete it here), keep "
        "ca/ca.key offline, and start the coordinator with its coordinator/ folder."
    )
    if args.add_site or args.rotate_key:
        console.print(
            "A running coordinator picks the change up with `fedmed coordinator register`."
        )
    return 0


# --- coordinator ----------------------------------------------------------------------------


def _coordinator_state(args: argparse.Namespace, federation: str) -> Path:
    return Path(args.state) if args.state else state_root() / "deploy" / f"coordinator-{federation}"


def cmd_coordinator_start(args: argparse.Namespace) -> int:
    from fedmed.deploy.coordinator import Coordinator

    kit = load_coordinator_kit(args.kit)
    state = _coordinator_state(args, kit.federation)
    with sigterm_interrupts():
        coordinator = Coordinator(kit, state, args.listen, echo=_echo(args.quiet),
                                  memory_state=args.memory_state)
        try:
            reconciled = coordinator.start()
            assert coordinator.process is not None
            registered = sorted(reconciled.registered + reconciled.known)
            console.print(
                f"[bold green]coordinator ready[/bold green]: federation {kit.federation} on "
                f"{coordinator.host}:{coordinator.port} (TLS, node authentication on); "
                f"nodes registered: {', '.join(registered) or 'none'}"
                + (f"; unregistered: {', '.join(reconciled.unregistered)}"
                   if reconciled.unregistered else "")
            )
            console.print(f"state {coordinator.layout.root}; log {coordinator.layout.log}")
            _print_interrupted(coordinator.interrupted)
            watch_runs(coordinator)
            raise ProcessFailed(coordinator.failure_message("stopped", 0))
        except KeyboardInterrupt:
            console.print("coordinator stopping …")
        finally:
            coordinator.stop()
    console.print("coordinator stopped")
    return 0


def watch_runs(coordinator: Coordinator) -> None:
    """Wait while the SuperLink runs; every few seconds, record the end of a run whose
    ServerApp died without writing it (one ``/proc`` read per live run; see
    :mod:`fedmed.deploy.runs`). A failed check is shown, never fatal to the coordinator."""
    from fedmed.deploy.runs import RECONCILE_SECONDS

    assert coordinator.process is not None
    next_check = time.monotonic() + RECONCILE_SECONDS
    while coordinator.process.running():
        time.sleep(0.5)
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + RECONCILE_SECONDS
            try:
                _print_interrupted(coordinator.reconcile_runs(ask_when_unsure=False))
            except (FedmedError, OSError) as exc:
                console.print(f"[yellow]could not check the runs[/yellow]: {exc}")


def _print_interrupted(runs: list[RunState]) -> None:
    for run in runs:
        console.print(
            f"[yellow]run {run.run_id or run.run_dir} (Flower run {run.flower_run})[/yellow] "
            f"recorded as {run.status}; after round {run.last_round}. Submit it again with "
            f"--out {run.run_dir} to resume it"
        )


def cmd_coordinator_register(args: argparse.Namespace) -> int:
    from fedmed.deploy.coordinator import CoordinatorLayout, listen_address, local_address
    from fedmed.deploy.flwr_cli import Connection
    from fedmed.deploy.registry import reconcile

    kit = load_coordinator_kit(args.kit)
    layout = CoordinatorLayout(_coordinator_state(args, kit.federation).resolve())
    _, port = listen_address(kit, args.listen)
    connection = Connection(layout.flwr_home, local_address(kit, port), kit.ca_cert).write()
    outcome = reconcile(kit, connection, layout.root)
    console.print(
        f"registered: {', '.join(outcome.registered) or 'none'}; already registered: "
        f"{', '.join(outcome.known) or 'none'}; unregistered: "
        f"{', '.join(outcome.unregistered) or 'none'}"
    )
    return 0


def coordinator_home(args: argparse.Namespace) -> Path:
    """The state folder ``coordinator status`` reads: ``--home``; else the default of
    ``coordinator start --kit`` for ``--kit``; else the one coordinator folder under
    ``<state>/deploy``. DeployError when that is not a coordinator's state folder."""
    if args.home:
        home = Path(args.home)
    elif args.kit:
        federation = load_coordinator_kit(args.kit).federation
        home = _coordinator_state(argparse.Namespace(state=None), federation)
    else:
        folder = state_root() / "deploy"
        found = sorted(folder.glob("coordinator-*"))
        if len(found) != 1:
            names = ", ".join(f.name for f in found) or "none"
            raise DeployError(
                f"{len(found)} coordinator state folders in {folder} ({names}); pass --home "
                "DIR (the --state of fedmed coordinator start)"
            )
        home = found[0]
    home = home.resolve()
    from fedmed.deploy.coordinator import CoordinatorLayout

    layout = CoordinatorLayout(home)
    started = layout.database.exists() or (home / REGISTRY_FILE).is_file()  # memory state: no db
    if not (layout.flwr_home / "config.toml").is_file() or not started:
        raise DeployError(
            f"{home} is not a coordinator's state folder (no flwr/config.toml and superlink.db "
            f"or {REGISTRY_FILE} written by fedmed coordinator start); pass --home DIR, the "
            "coordinator's --state"
        )
    return home


def cmd_coordinator_status(args: argparse.Namespace) -> int:
    """``fedmed coordinator status``: runs, sites, last round and ε per site; exit 2 (after
    showing what the files say) when the coordinator does not answer."""
    from fedmed.deploy.flwr_cli import Connection
    from fedmed.deploy.runs import as_json, ask_flower, run_states, site_states

    home = coordinator_home(args)
    connection = Connection.read(home / "flwr")
    flower = ask_flower(connection)
    runs, sites = run_states(home, flower), site_states(home, flower)
    if args.json:
        print(json.dumps(as_json(home, flower, runs, sites), indent=2))
    else:
        print_status(home, connection.address, flower, runs, sites)
    if not flower.reachable:
        raise CoordinatorUnreachable(
            f"the coordinator at {connection.address} did not answer ({flower.error}); "
            "what is shown is what its files say"
        )
    return 0


def print_status(
    home: Path, address: str, flower: FlowerView, runs: list[RunState], sites: list[SiteState]
) -> None:
    """The status for people: a line per run and per site (whole ids, any terminal width)."""
    from fedmed.deploy.runs import flower_only_runs

    said = "answers" if flower.reachable else f"[red]does not answer[/red] ({flower.error})"
    console.print(f"[bold]coordinator[/bold] {home}: SuperLink at {address} {said}")
    if not flower.reachable:
        console.print("[yellow]Runs and sites below: what the files say.[/yellow]")
    others = flower_only_runs(runs, flower) if flower.reachable else []
    console.print(f"runs ({len(runs) + len(others)}):" if runs or others else "runs: none")
    for run in runs:
        earlier = ", ".join(run.earlier_flower_runs)
        earlier = f" (before: {earlier})" if earlier else ""
        status = run.status if run.recorded else f"{run.status} (not yet recorded)"
        epsilon = ", ".join(f"{site} {format_epsilon(e)}" for site, e in run.epsilon.items())
        console.print(
            f"  {_relative(Path(run.run_dir), home)} — Flower run {run.flower_run}{earlier}: "
            f"Flower {run.flower_status or '?'}, fedmed {status}; round {run.last_round} of "
            f"{run.rounds}; ε {epsilon or '-'}"
        )
    for other in others:
        console.print(f"  (no run directory) — Flower run {other['run-id']}: {other['status']}")
    console.print(f"sites ({len(sites)}):" if sites else "sites: none registered")
    for site in sites:
        since = f" since {site.since}" if site.since else ""
        console.print(f"  {site.site} — node {site.node_id or '?'}: {site.status or '?'}{since}")


def _relative(path: Path, home: Path) -> str:
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


# --- node -----------------------------------------------------------------------------------


def cmd_node_start(args: argparse.Namespace) -> int:
    from fedmed.deploy.node import Node

    kit = load_site_kit(args.kit)
    address = args.coordinator or (kit.addresses[0] if kit.addresses else "")
    if not address:
        raise DeployError("no coordinator address: pass --coordinator HOST:PORT")
    state = Path(args.state) if args.state else state_root() / "deploy" / f"node-{kit.site}"
    home = args.site_home or site_home_path(kit.federation, kit.site)
    with sigterm_interrupts():
        node = Node(
            kit, args.data, home, address, state, args.port, _echo(args.quiet), args.poll,
            max_physical_batch=args.max_physical_batch,
        )
        try:
            node_id = node.start(timeout=args.wait)
            assert node.process is not None
            console.print(
                f"[bold green]node ready[/bold green]: site {kit.site} connected to {address} "
                f"as SuperNode {node_id}; data {node.data_dir}; site home {node.site_home}"
            )
            console.print(f"log {node.layout.log}")
            while node.process.running():
                time.sleep(0.5)
            raise ProcessFailed(f"the SuperNode stopped; see {node.layout.log}")
        except KeyboardInterrupt:
            console.print("node stopping …")
        finally:
            node.stop()
    console.print("node stopped")
    return 0


# --- run --coordinator ----------------------------------------------------------------------


def deployment_config(folder: Path, args: argparse.Namespace) -> FederationConfig:
    """The federation's settings for a deployed run: as for simulation, except that SecAgg+
    is on unless the folder or ``--set`` says otherwise."""
    config = federation_config(folder, args)
    explicit = "secagg" in load_federation(folder) or any(
        item.partition("=")[0].strip() == "secagg" for item in args.set
    )
    if not explicit:
        config = dataclasses.replace(config, secagg=True)
        config.validate()  # e.g. client-dp cannot be combined with SecAgg+
    return config


def deployment_settings(
    config: FederationConfig, out: Path | None, name: str
) -> dict[str, ConfigValue]:
    """The run config sent to the coordinator: paths that only mean something there."""
    settings = config.to_run_config()
    settings["run-dir"] = str(out) if out else f"runs/{name}"
    settings["sites-home"] = ""  # each node's site home comes from its node config
    settings["coordinator-home"] = ""  # the coordinator's state folder decides
    settings["registered-sites"] = True  # sites named by their registered node keys
    return settings


def run_on_coordinator(folder: Path, args: argparse.Namespace) -> int:
    """``fedmed run FEDERATION --coordinator ADDR --kit DIR``: submit, follow, print results."""
    from fedmed.deploy.submit import submit
    from fedmed.server.progress import results_table

    if not args.kit:
        raise DeployError("--coordinator needs --kit (a folder made by fedmed provision)")
    out = args.out
    args = argparse.Namespace(**{**vars(args), "out": None})  # --out is the coordinator's path
    config = deployment_config(folder, args)
    name = f"{config.federation}-{config.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = deployment_settings(config, out, name)
    address = args.coordinator
    console.print(
        f"[bold]fedmed[/bold] federation [cyan]{config.federation}[/cyan] on the coordinator "
        f"at {address}: {config.strategy}, {config.num_server_rounds} rounds, "
        f"{'SecAgg+' if config.secagg else 'no secure aggregation'}; run directory "
        f"{settings['run-dir']} (on the coordinator)"
    )
    outcome = submit(
        folder,
        settings,
        address,
        find_ca_cert(args.kit),
        name,
        echo=lambda line: print(line, flush=True),
    )
    console.print(f"run {outcome.run_id}: {outcome.status}; log {outcome.log}")
    result = outcome.result
    if result is None:
        raise DeployError(
            f"run {outcome.run_id} ended ({outcome.status}) without results; if the coordinator "
            f"restarted, submit the same command with --out {settings['run-dir']} to resume"
        )
    final = result.get("final", {})
    console.print(
        results_table(f"{config.federation}: final global model", final.get("per_site", {}),
                      final.get("mean", {}))
    )
    console.print(privacy_table(result))
    console.print(f"run directory (on the coordinator): [bold]{result.get('run_dir', '')}[/bold]")
    return 0 if outcome.status.endswith("completed") else 1


def add_coordinator_options(parser: argparse.ArgumentParser) -> None:
    """``fedmed run``'s deployment options (registered by fedmed.commands.run)."""
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="submit to this coordinator (deployment) instead of simulating",
    )
    parser.add_argument(
        "--kit", type=Path, help="with --coordinator: any folder made by fedmed provision"
    )


# --- registration ---------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_provision(subparsers)
    _register_coordinator(subparsers)
    _register_node(subparsers)


def _register_provision(subparsers: argparse._SubParsersAction) -> None:
    provision = subparsers.add_parser(
        "provision",
        help="create the CA, the coordinator kit and one startup kit per site",
        description="Create a federation folder: CA, coordinator TLS certificate (SANs = the "
        "addresses nodes dial), and per site its node authentication key, audit signing key "
        "and policy template. --add-site adds one site later; --rotate-key replaces one "
        "site's node key. Nothing else is re-issued.",
    )
    provision.add_argument("--out", type=Path, required=True, help="federation folder")
    provision.add_argument("--federation", help="federation name, e.g. heart")
    provision.add_argument("--sites", help="comma-separated site names, e.g. a,b,c")
    provision.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="an address nodes use to reach the coordinator (repeat; default 127.0.0.1:9092 "
        "and localhost:9092)",
    )
    provision.add_argument(
        "--tasks", default="*", help="tasks the sites' policy templates allow (default: all)"
    )
    provision.add_argument("--add-site", metavar="SITE", help="add one site to --out")
    provision.add_argument("--rotate-key", metavar="SITE", help="new node key for one site")
    provision.set_defaults(func=cmd_provision)


def _register_coordinator(subparsers: argparse._SubParsersAction) -> None:
    coordinator = subparsers.add_parser(
        "coordinator", help="run the coordinator (Flower SuperLink with TLS and node auth)"
    )
    commands = coordinator.add_subparsers(dest="coordinator_command", metavar="CMD")
    start = commands.add_parser(
        "start",
        help="start the coordinator in the foreground",
        description="Start a SuperLink with TLS, node authentication, no runtime dependency "
        "installation and a persistent database; register the kit's nodes.",
    )
    register_nodes = commands.add_parser(
        "register", help="register new / unregister retired node keys on a running coordinator"
    )
    status = commands.add_parser(
        "status",
        help="runs, connected sites, last round and ε per site of a coordinator",
        description="Show a coordinator's runs (Flower run id, run directory, status from "
        "Flower and from the run's metrics.json — a run whose ServerApp died shows as "
        "interrupted, never running), its registered sites (online or offline, and since "
        "when), and per run the last completed round and the ε each site spent. Reads the "
        "state folder and asks the SuperLink through Flower's CLI; when the SuperLink does "
        "not answer, shows what the files say and exits 2.",
    )
    status.add_argument(
        "--home", "--state", dest="home", type=Path, metavar="DIR",
        help="the coordinator's state folder (its --state; default: the one under "
        ".fedmed/deploy, or the default for --kit)",
    )  # fmt: skip
    status.add_argument("--kit", type=Path, help="the coordinator/ kit (to find the default home)")
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=cmd_coordinator_status)
    for sub in (start, register_nodes):
        _add_coordinator_kit_options(sub)
    start.add_argument("--quiet", action="store_true", help="log to the state folder only")
    start.add_argument(
        "--memory-state", action="store_true",
        help="keep the SuperLink's state in memory, not in <state>/superlink.db: deployed "
        "rounds run about twice as fast; a restart forgets node registrations, so nodes "
        "must be restarted with it (docs/operator-guide.md § 10)",
    )  # fmt: skip
    start.set_defaults(func=cmd_coordinator_start)
    register_nodes.set_defaults(func=cmd_coordinator_register)


def _add_coordinator_kit_options(parser: argparse.ArgumentParser) -> None:
    """``--kit``, ``--state`` and ``--listen``: shared by coordinator start and register."""
    parser.add_argument("--kit", type=Path, required=True, help="the coordinator/ kit folder")
    parser.add_argument(
        "--state", type=Path, help="state folder (default .fedmed/deploy/coordinator-NAME)"
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="bind address (default: the kit's port, on 0.0.0.0 unless every certificate "
        "address is loopback)",
    )


def _register_node(subparsers: argparse._SubParsersAction) -> None:
    node = subparsers.add_parser("node", help="run a hospital node (Flower SuperNode)")
    commands = node.add_subparsers(dest="node_command", metavar="CMD")
    start = commands.add_parser(
        "start",
        help="start this site's node in the foreground",
        description="Start a SuperNode with the site kit's CA and node key; its data folder "
        "and site home reach the ClientApp as node config.",
    )
    start.add_argument("--kit", type=Path, required=True, help="this site's kit folder")
    start.add_argument("--data", type=Path, required=True, help="this site's data folder")
    start.add_argument(
        "--site-home", type=Path, help="site home (default .fedmed/sites/FEDERATION/SITE)"
    )
    start.add_argument(
        "--coordinator", metavar="HOST:PORT", help="coordinator address (default: the kit's)"
    )
    start.add_argument("--state", type=Path, help="state folder (default .fedmed/deploy)")
    start.add_argument(
        "--port",
        type=int,
        default=DEFAULT_RUNTIME_PORT,
        help=f"local runtime API port (default {DEFAULT_RUNTIME_PORT}; one per node)",
    )
    start.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the coordinator's accept"
    )
    start.add_argument(
        "--poll",
        type=_poll_seconds,
        default=DEFAULT_POLL_SECONDS,
        metavar="SECONDS",
        help=f"longest pause of an idle node between looks for work (default "
        f"{DEFAULT_POLL_SECONDS:g}; Flower's own is 3 s; raise it for many nodes or slow links)",
    )
    start.add_argument(
        "--max-physical-batch",
        type=_physical_batch,
        default=0,
        metavar="N",
        help="DP-SGD on this machine: at most N examples per forward/backward pass, larger "
        "batches split into parts with the same privacy mechanism (default 0: no limit; "
        "wins over the federation's max-physical-batch)",
    )
    start.add_argument("--quiet", action="store_true", help="log to the state folder only")
    start.set_defaults(func=cmd_node_start)


def _physical_batch(text: str) -> int:
    """A whole number of examples, 0 for no limit."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (no limit) or more, got {text}")
    return value


def _poll_seconds(text: str) -> float:
    """A finite pause from 0.01 to 3 s (Flower's own idle pause is the most it makes sense)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.01 <= value <= 3.0:
        raise argparse.ArgumentTypeError(f"must be from 0.01 to 3 seconds, got {text}")
    return value
