"""Every task pack trains through the node's real path on a GPU, with and without DP.

Why a separate check: CI and the development machine have no GPU, so a tensor left
on the CPU inside a model, a loss, an explainer or Opacus's hooks would only show at a
GPU hospital. For each example federation this runs two sites for two rounds through
:class:`fedmed.clients.hospital.HospitalClient` — site home, policy, privacy ledger,
Opacus DP-SGD, local normalisation layers, the final-round explainers — aggregates
with Flower's own ``aggregate`` and evaluates every site. Each device named in
``--devices`` runs the same work side by side, so the seconds per round compare.

    python bench/cuda_check.py --devices cuda,cpu --out DIR

Exit status 1 if any pack fails on any device; the table and ``cuda_check.json`` say
which and why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.server.strategy.aggregate import aggregate

from fedmed.clients.hospital import HospitalClient
from fedmed.clients.node import HospitalSite
from fedmed.clients.site_home import SiteHome
from fedmed.config import FederationConfig, load_federation
from fedmed.explain.outcome import COUNT, ERROR
from fedmed.privacy.policy import Policy
from fedmed.server.app import evaluate_config_fn, fit_config_fn
from fedmed.state import STATE_ENV
from fedmed.tasks import get_task
from fedmed.training.loop import get_weights

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@dataclass(frozen=True)
class Case:
    """One example federation, with the settings this check changes."""

    label: str
    folder: str
    overrides: tuple[tuple[str, Any], ...] = ()


CASES = (
    Case("heart", "heart"),
    Case("ecg", "ecg"),
    Case("ecg-lstm", "ecg", (("task", "ecg-lstm"),)),
    Case("ecg-denoise", "ecg-denoise"),
    Case("imaging-cls", "imaging-cls"),
    Case("imaging-cls+local-norm", "imaging-cls", (("local_norm", True),)),
    Case("imaging-seg", "imaging-seg"),
    Case("icd", "icd"),
    Case("icd-minilm", "icd-minilm"),
    Case("deid-ner", "deid-ner"),
)


def case_config(case: Case, rounds: int, dp: bool) -> FederationConfig:
    # dp-recipe none: the same training settings with and without DP (and as when the
    # docs' figures were measured, before fedmed.dp_recipes).
    settings = {**load_federation(EXAMPLES / case.folder), "dp-recipe": "none"}
    base = FederationConfig.from_run_config(settings)
    return replace(base, num_server_rounds=rounds, dp=dp, **dict(case.overrides))


def run_case(case: Case, device: str, rounds: int, dp: bool, root: Path) -> dict[str, Any]:
    """Two sites, ``rounds`` rounds on ``device``; what happened, or the error."""
    config = case_config(case, rounds, dp)
    pack = get_task(config.task)
    sites = config.site_list(pack.site_names())[:2]
    run = f"cuda-check-{case.label}-{'dp' if dp else 'plain'}-{device}"
    clients = []
    for site in sites:
        opened = HospitalSite.open(config.task, site, config.data_dir or None, config.seed)
        home = root / run / site
        # DP runs meet the default policy (a finite budget); plain runs need an unbounded one.
        SiteHome.create(home, site, Policy() if dp else Policy(epsilon=math.inf))
        clients.append(HospitalClient(replace(opened, device=torch.device(device)), home))
    torch.manual_seed(config.seed)
    weights = get_weights(pack.build_model())
    fit_config = fit_config_fn(config, pack, run)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    epsilon: dict[str, float] = {}
    for server_round in range(1, rounds + 1):
        results = []
        for client in clients:
            new, examples, metrics = client.fit(weights, fit_config(server_round))
            if metrics.get("refused"):
                raise RuntimeError(f"{client.site.name} refused: {metrics.get('reason')}")
            if not all(np.isfinite(w).all() for w in new):
                raise RuntimeError(f"{client.site.name}: non-finite weights, round {server_round}")
            epsilon[client.site.name] = float(metrics.get("epsilon", 0.0))
            results.append((new, examples))
        weights = aggregate(results)
    seconds_per_round = (time.perf_counter() - started) / rounds
    final = {**evaluate_config_fn(run)(rounds), "num-rounds": rounds, "final-round": True}
    scores = {}
    for client in clients:
        _, _, metrics = client.evaluate(weights, final)
        if metrics.get(ERROR):
            raise RuntimeError(f"{client.site.name} explainer: {metrics[ERROR]}")
        scores[client.site.name] = {
            "score": float(metrics[pack.primary_metric]),
            "explanations": int(metrics.get(COUNT, 0)),
        }
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    return {
        "metric": pack.primary_metric,
        "seconds_per_round": seconds_per_round,
        "sites": scores,
        "epsilon": epsilon,
        "peak_cuda_mib": peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cuda,cpu", help="comma-separated, e.g. cuda,cpu")
    parser.add_argument("--cases", default="", help="comma-separated labels (default: all)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    wanted = {c for c in args.cases.split(",") if c}
    cases = [c for c in CASES if not wanted or c.label in wanted]
    devices = [d for d in args.devices.split(",") if d]
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        print("cuda asked for but torch.cuda.is_available() is False", file=sys.stderr)
        return 1
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    records, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="fedmed-cuda-check-") as tmp:
        os.environ.setdefault(STATE_ENV, str(Path(tmp) / "state"))
        for case in cases:
            for dp in (True, False):
                for device in devices:
                    record: dict[str, Any] = {"case": case.label, "dp": dp, "device": device}
                    try:
                        record.update(run_case(case, device, args.rounds, dp, Path(tmp)))
                        sites = record["sites"]
                        shown = " ".join(f"{s}={v['score']:.3f}" for s, v in sites.items())
                        eps = max(record["epsilon"].values(), default=0.0)
                        print(f"ok   {case.label:24s} dp={dp!s:5s} {device:5s} "
                              f"{record['seconds_per_round']:7.2f} s/round  "
                              f"{record['metric']} {shown}  eps={eps:.2f}  "
                              f"peak={record['peak_cuda_mib']:.0f} MiB", flush=True)
                    except Exception as exc:  # noqa: BLE001 — the check reports every failure
                        failed += 1
                        record["error"] = f"{type(exc).__name__}: {exc}"
                        record["traceback"] = traceback.format_exc()
                        print(f"FAIL {case.label:24s} dp={dp!s:5s} {device:5s} {record['error']}",
                              flush=True)
                    records.append(record)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.json").write_text(json.dumps(records, indent=2))
    print(f"{len(records) - failed} passed, {failed} failed; {args.out / 'cuda_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
