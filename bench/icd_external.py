"""The ICD packs' federated models scored on notes their generator did not write.

Usage::

    python bench/icd_external.py [--tasks icd,icd-sentences] [--size 1000]
                                 [--epsilons 1,inf] [--seed 0] [--data bench/data/icd-external]

Why: the built-in test notes come from the same generator (templates, phrasings, section
layout) as the training notes, so a score on them says the plumbing works, not that a coder
reads other notes. ``bench/data/icd-external/external/notes.jsonl`` holds 36 notes written
by hand for this bench, apart from the generator: free-text visit notes, consults and
discharge summaries in other layouts, the codes often named in words the generator never
uses ("elevated BP", "clot in the left popliteal vein", "SIADH", "septic shock"), with
negations and family history of their own ("Denies smoking", "father had … diabetes"). It
is in the data-dir format of docs/icd.md (the format needs both splits; this bench scores
every note, whatever its split).

For each pack and ε it trains FedAvg over the four built-in sites at ``--size`` training
notes per site exactly as ``bench/dp_accuracy.py`` does (the same HospitalClient path, the
pack's DP recipe with DP on), then scores the final global model on the built-in test
notes (mean over sites) and on the external notes, which pass a de-identification gate of
their own first, like any site's notes. The first row of each pack is the initial global
model, untrained (for ``icd-sentences`` the zero-shot coder of the codes' titles).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from fedmed.clients.node import HospitalSite
from fedmed.training.loop import get_weights, set_weights

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / "data" / "icd-external"
SITE = "external"


def dp_accuracy():  # noqa: ANN201 - the sibling bench script, loaded as a module
    """``bench/dp_accuracy.py``: its federation loop and point configs, reused as they are."""
    spec = importlib.util.spec_from_file_location("dp_accuracy", REPO / "bench" / "dp_accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="icd,icd-sentences")
    parser.add_argument("--size", type=int, default=1000, help="training notes per site")
    parser.add_argument("--epsilons", default="1,inf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench = dp_accuracy()
    print(f"micro_f1 / macro_f1 of the final global model (FedAvg, {args.size} training notes "
          f"per built-in site, seed {args.seed}); built-in: mean over the sites' test notes; "
          f"external: every note of {args.data / SITE}", flush=True)
    print(f"{'pack':14} {'epsilon':>9} | {'built-in':>13} | {'external':>13} | training")
    for task in args.tasks.split(","):
        folder = REPO / "examples" / task
        settings = bench.base_settings(bench.parse_args(["--federation", str(folder)]))
        external = HospitalSite.open(task, SITE, args.data, args.seed)
        notes = ConcatDataset([external.data.train, external.data.test])
        plain = bench.point_config(settings, args.size, math.inf, args.seed)
        names = plain.site_list(external.pack.site_names())
        sites = [bench.loaded_site(plain, site) for site in names]
        torch.manual_seed(args.seed)  # as the coordinator's initial model
        untrained = get_weights(external.pack.build_model())
        row(task, "untrained", [s.evaluate(untrained) for s in sites],
            score(external, notes, untrained), "the initial global model")
        for epsilon in (float(e) for e in args.epsilons.split(",")):
            config = bench.point_config(settings, args.size, epsilon, args.seed)
            with tempfile.TemporaryDirectory(prefix="icd-external-") as homes:
                clients, weights = bench.federate(config, Path(homes))
            row(task, "inf" if math.isinf(epsilon) else f"{epsilon:g}",
                [c.site.evaluate(weights) for c in clients], score(external, notes, weights),
                bench.training(config))
    return 0


def score(external: HospitalSite, notes: ConcatDataset, weights: list) -> dict[str, float]:
    """The pack's metrics of ``weights`` on every external note."""
    model = external.pack.build_model()
    set_weights(model, weights)
    return external.pack.evaluate(model, notes, torch.device("cpu"))


def row(task: str, label: str, own: list[dict[str, float]], outside: dict[str, float],
        training: str) -> None:
    """One line of the table: built-in means over sites, then the external notes."""
    built_in = {m: sum(s[m] for s in own) / len(own) for m in ("micro_f1", "macro_f1")}
    print(f"{task:14} {label:>9} | {built_in['micro_f1']:.3f} / {built_in['macro_f1']:.3f}"
          f" | {outside['micro_f1']:.3f} / {outside['macro_f1']:.3f} | {training}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
