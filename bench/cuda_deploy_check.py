"""A deployed federation whose nodes train on the GPU: SuperLink, SuperNodes, TLS, SecAgg+, DP.

``bench/cuda_check.py`` runs every pack's node code inside one process. This runs the
heart federation the way hospitals deploy it — Flower's SuperLink and one SuperNode per
site as separate processes on loopback (:class:`fedmed.deploy.loopback.LoopbackFederation`:
provisioned kits, TLS, node authentication), each round's ClientApp in a process of its
own, SecAgg+ and DP-SGD on as the example sets them — and reads the coordinator's
``metrics.json`` to check that every site trained every round on the device it reports
(``device`` in its fit reply), spent ε and was aggregated.

    python bench/cuda_deploy_check.py --expect cuda --out DIR

Exit status 1 if the run fails or any site trained elsewhere than ``--expect``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEART = REPO / "examples" / "heart"
SITES = ("cleveland", "hungary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", default="cuda", help="device every site must report")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedmed-cuda-deploy-") as tmp:
        # before fedmed is imported: every process it starts keeps its state in tmp
        os.environ.setdefault("FEDMED_STATE", str(Path(tmp) / "state"))
        from fedmed.cli import main as fedmed
        from fedmed.deploy.loopback import LoopbackFederation
        from fedmed.tasks.heart import DATA_DIR

        started = time.perf_counter()
        with LoopbackFederation(Path(tmp) / "deploy", "heart", SITES, DATA_DIR) as federation:
            code = fedmed([
                "run", str(HEART), "--coordinator", federation.address,
                "--kit", str(federation.kits), "--set", f"sites={','.join(SITES)}",
                "--rounds", str(args.rounds), "--out", "runs/cuda",
            ])  # fmt: skip
            assert federation.coordinator is not None
            metrics_file = federation.coordinator.layout.root / "runs" / "cuda" / "metrics.json"
            metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        seconds = time.perf_counter() - started
    rounds = metrics.get("rounds", [])
    devices = {site: [r.get("fit", {}).get(site, {}).get("device") for r in rounds]
               for site in SITES}
    summary = {
        "exit_code": code,
        "seconds_with_start_and_stop": round(seconds, 1),
        "secagg": metrics.get("config", {}).get("secagg"),
        "dp": metrics.get("config", {}).get("dp"),
        "devices": devices,
        "epsilon": {s: metrics.get("privacy", {}).get(s, {}).get("epsilon") for s in SITES},
        "final": metrics.get("final", {}).get("per_site"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_deploy_check.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    trained_as_expected = all(
        len(seen) == args.rounds and set(seen) == {args.expect} for seen in devices.values()
    )
    if code != 0 or not trained_as_expected:
        print(f"FAIL: expected every site to train every round on {args.expect}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
