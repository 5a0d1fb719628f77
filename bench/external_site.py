"""Federated models scored on a site their generator did not write: the loop shared by
``bench/icd_external.py`` and ``bench/ecg_external.py``.

For each pack and ε it trains FedAvg over the pack's built-in sites at ``size`` training
examples per site exactly as ``bench/dp_accuracy.py`` does (the same HospitalClient path,
the pack's DP recipe with DP on), then scores the final global model on the built-in test
splits (mean over sites) and on every example of the outside site folder, read through the
pack's own data-dir reader and de-identification gate like any hospital's export (both of
its splits: the reader needs them, this bench scores all). The first row of each pack is
the initial global model, untrained.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from fedmed.clients.node import HospitalSite
from fedmed.training.loop import get_weights, set_weights

REPO = Path(__file__).resolve().parents[1]


def dp_accuracy():  # noqa: ANN201 - the sibling bench script, loaded as a module
    """``bench/dp_accuracy.py``: its federation loop and point configs, reused as they are."""
    spec = importlib.util.spec_from_file_location("dp_accuracy", REPO / "bench" / "dp_accuracy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Detail = Callable[[torch.nn.Module, ConcatDataset], str]


def parser(description: str, tasks: str, unit: str) -> argparse.ArgumentParser:
    """The options every outside-site bench takes: ``--tasks`` (default ``tasks``), ``--size``
    (training ``unit`` per built-in site), ``--epsilons`` and ``--seed``."""
    options = argparse.ArgumentParser(description=description)
    options.add_argument("--tasks", default=tasks)
    options.add_argument("--size", type=int, default=1000, help=f"training {unit} per site")
    options.add_argument("--epsilons", default="1,inf")
    options.add_argument("--seed", type=int, default=0)
    return options


def compare_from(args: argparse.Namespace, data_dir: Path, site: str,
                 metrics: tuple[str, str], detail: Detail | None = None) -> None:
    """:func:`compare` with the options of :func:`parser`."""
    compare(args.tasks.split(","), args.size, [float(e) for e in args.epsilons.split(",")],
            args.seed, data_dir, site, metrics, detail)


def compare(tasks: Sequence[str], size: int, epsilons: Sequence[float], seed: int,
            data_dir: Path, site: str, metrics: tuple[str, str],
            detail: Detail | None = None) -> None:
    """Print one row per pack and ε: ``metrics`` on the built-in tests and on ``site``;
    ``detail`` (the model, the outside examples → one line) is printed under each row."""
    torch.set_num_threads(1)
    bench = dp_accuracy()
    print(f"{' / '.join(metrics)} of the final global model (FedAvg, {size} training examples "
          f"per built-in site, seed {seed}); built-in: mean over the sites' test splits; "
          f"external: every example of {data_dir / site}", flush=True)
    print(f"{'pack':14} {'epsilon':>9} | {'built-in':>13} | {'external':>13} | training")
    for task in tasks:
        folder = REPO / "examples" / task
        settings = bench.base_settings(bench.parse_args(["--federation", str(folder)]))
        external = HospitalSite.open(task, site, data_dir, seed)
        examples = ConcatDataset([external.data.train, external.data.test])
        plain = bench.point_config(settings, size, math.inf, seed)
        sites = [bench.loaded_site(plain, name)
                 for name in plain.site_list(external.pack.site_names())]
        torch.manual_seed(seed)  # as the coordinator's initial model
        untrained = get_weights(external.pack.build_model())
        _row(task, "untrained", [s.evaluate(untrained) for s in sites],
             _score(external, examples, untrained, detail), "the initial global model", metrics)
        for epsilon in epsilons:
            config = bench.point_config(settings, size, epsilon, seed)
            with tempfile.TemporaryDirectory(prefix="external-") as homes:
                clients, weights = bench.federate(config, Path(homes))
            _row(task, "inf" if math.isinf(epsilon) else f"{epsilon:g}",
                 [c.site.evaluate(weights) for c in clients],
                 _score(external, examples, weights, detail), bench.training(config), metrics)


def _score(external: HospitalSite, examples: ConcatDataset, weights: list,
           detail: Detail | None) -> tuple[dict[str, float], str]:
    """The pack's metrics of ``weights`` on every external example, and ``detail``'s line."""
    model = external.pack.build_model()
    set_weights(model, weights)
    scores = external.pack.evaluate(model, examples, torch.device("cpu"))
    return scores, detail(model, examples) if detail else ""


def _row(task: str, label: str, own: list[dict[str, float]],
         outside: tuple[dict[str, float], str], training: str, metrics: tuple[str, str]) -> None:
    """One line of the table: built-in means over sites, then the external site (and the
    detail line under it, when there is one)."""
    first, second = metrics
    built_in = {m: sum(s[m] for s in own) / len(own) for m in metrics}
    scores, detail = outside
    print(f"{task:14} {label:>9} | {built_in[first]:.3f} / {built_in[second]:.3f}"
          f" | {scores[first]:.3f} / {scores[second]:.3f} | {training}", flush=True)
    if detail:
        print(f"{'':24} {detail}", flush=True)
