"""DP-SGD epoch time / non-DP epoch time for every registered task pack, in one run.

Usage::

    python bench/dp_overhead.py [--repeats 3] [--max-examples 512] [--tasks heart,ecg]
                                [--modes hooks,ew,ghost,auto] [--device cuda]

For each pack (``fedmed.tasks.task_names()``, so new packs are included without
editing this file) it loads the first site, takes up to ``--max-examples`` training
examples, and times local training with :func:`fedmed.training.loop.train_round` at the
pack's default batch size and learning rate: without DP, and with
:class:`fedmed.privacy.trainer.DPTrainer` in each of ``--modes`` side by side (default:
Opacus's ``hooks``, expanded weights ``ew``, ghost clipping ``ghost``, and ``auto``, the
mode a node picks; ``functorch`` and ``bookkeeping`` on request). Ratios are DP / non-DP,
median over ``--repeats`` interleaved runs (see :func:`measure`). ``--device cuda``
measures the same on a GPU (the clock stops only after the GPU has finished:
:func:`torch.cuda.synchronize`).

The last column, ``DP recipe``, is what turning DP on costs a node as shipped: DP-SGD
(``auto``) with the pack's measured DP recipe (``fedmed.dp_recipes``: its batch size, lr and
clip norm, which a node trains with under DP) against the same plain runs at the pack's
plain defaults, the same number of epochs; ``-`` for a pack without a recipe (its DP runs
are the ``auto`` column's). The other columns compare at one batch size: the per-example
gradient machinery's cost. A larger recipe batch means fewer DP steps, and Opacus's
per-step cost (clipping, noise, the accountant's record) is paid fewer times.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.data import Dataset, Subset

from fedmed.dp_recipes import RECIPES
from fedmed.errors import ConfigError
from fedmed.privacy.trainer import GRAD_SAMPLE_MODES, DPTrainer, poisson_schedule
from fedmed.tasks import TaskPack, get_task, task_names
from fedmed.training.loop import TrainSettings, train_round

MODES = ("hooks", "ew", "ghost", "auto")
WIDTH = 16  # a ratio column; ``auto``'s also names the mode it picked, e.g. "1.73x (bookkeeping)"
AUTO_WIDTH = 21
MIN_SECONDS = 0.3  # each timed run trains enough epochs to last at least this long
NOTES: list[str] = []


def run_once(pack: TaskPack, data: Dataset, settings: TrainSettings,
             make_trainer: Callable[[], DPTrainer] | None,
             device: torch.device) -> tuple[float, str]:
    """Seconds to train a fresh model with ``settings``; the per-sample mode used (DP)."""
    torch.manual_seed(0)
    model = pack.build_model()
    trainer = make_trainer() if make_trainer else None
    start = time.perf_counter()
    train_round(pack, model, data, settings, device, wrap=trainer.wrap if trainer else None)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: wait before stopping
    elapsed = time.perf_counter() - start
    if trainer is None:
        return elapsed, "-"
    trainer.verify()
    return elapsed, trainer.mode_used


def measure(task: str, max_examples: int, repeats: int, device: torch.device,
            modes: tuple[str, ...]) -> str:
    """One table row: plain epoch time and DP/plain ratios, measured interleaved.

    Runs alternate (plain, hooks, ew, ..., plain, ...) so a busy machine slows all of
    them alike; each ratio is the median over repeats of DP time / the plain time of
    the same repeat. Tiny epochs are stretched to several epochs per timed run.
    """
    pack = get_task(task)
    site = pack.site_names()[0]
    train = pack.load_site(site, None, 0).train
    data = Subset(train, range(min(max_examples, len(train))))  # type: ignore[arg-type]
    one_epoch = TrainSettings(local_epochs=1, batch_size=pack.default_batch_size,
                              lr=pack.default_lr, seed=0)
    warm, _ = run_once(pack, data, one_epoch, None, device)
    epochs = max(1, math.ceil(MIN_SECONDS / max(warm, 1e-6)))
    settings = dataclasses.replace(one_epoch, local_epochs=epochs)

    def maker(mode: str, trained: TrainSettings, clip: float = 1.0) -> Callable[[], DPTrainer]:
        rate, steps = poisson_schedule(len(data), trained.batch_for(len(data)))
        return lambda: DPTrainer(1.0, rate, steps * epochs, clip, pack.loss,
                                 grad_sample_mode=mode, task=task)

    runners: dict[str, tuple[TrainSettings, Callable[[], DPTrainer] | None]] = {
        "plain": (settings, None)}
    failures: dict[str, str] = {}
    for mode in modes:
        try:  # warm-up; does the mode work?
            run_once(pack, data, settings, maker(mode, settings), device)
            runners[mode] = (settings, maker(mode, settings))
        except (ConfigError, RuntimeError, NotImplementedError, TypeError) as exc:
            failures[mode] = "n/a"  # e.g. ew on grouped convolutions; reason in the footer
            NOTES.append(f"{task} {mode}: {str(exc).splitlines()[0][:90]}")
    recipe = RECIPES.get(task)
    if recipe is not None:
        shipped = dataclasses.replace(
            settings, batch_size=int(recipe.get("batch-size", settings.batch_size)),
            steps_per_epoch=int(recipe.get("steps-per-epoch", 0)),
            lr=float(recipe.get("lr", settings.lr)))  # deid-ner's recipe sets its steps only
        runners["recipe"] = (shipped, maker("auto", shipped, float(recipe.get("clip-norm", 1.0))))
    times: dict[str, list[float]] = {name: [] for name in runners}
    used = "-"
    for _ in range(repeats):
        for name, (trained, make) in runners.items():
            seconds, mode = run_once(pack, data, trained, make, device)
            times[name].append(seconds)
            used = mode if name == "auto" else used
    cells = [f"{task:<12} {site:<12} {len(data):>6} "
             f"{1000 * statistics.median(times['plain']) / epochs:>9.1f}"]
    for mode in modes:
        width = AUTO_WIDTH if mode == "auto" else WIDTH
        if mode in failures:
            cells.append(f"{failures[mode]:>{width}}")
            continue
        label = _ratio(times, mode) + (f" ({used})" if mode == "auto" else "")
        cells.append(f"{label:>{width}}")
    cells.append(f"{_ratio(times, 'recipe') if recipe else '-':>10}")
    return " ".join(cells)


def _ratio(times: dict[str, list[float]], name: str) -> str:
    """Median over repeats of ``name``'s time / the same repeat's plain time, as ``1.23x``."""
    ratios = (d / p for d, p in zip(times[name], times["plain"], strict=True))
    return f"{statistics.median(ratios):.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-examples", type=int, default=512)
    parser.add_argument("--tasks", help="comma-separated subset (default: every pack)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated DPTrainer modes, one column each (default: "
                             f"{','.join(MODES)}; any of {', '.join(GRAD_SAMPLE_MODES)})")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    unknown = sorted(set(modes) - set(GRAD_SAMPLE_MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; expected some of {', '.join(GRAD_SAMPLE_MODES)}")
    device = torch.device(args.device)
    torch.set_num_threads(1)  # one core per simulated node, as in a federation
    tasks = args.tasks.split(",") if args.tasks else task_names()
    where = "1 CPU thread"
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)}), 1 CPU thread"
    print(f"DP / non-DP training time, median of {args.repeats} interleaved runs, {where}")
    print(f"{'task':<12} {'site':<12} {'n':>6} {'epoch ms':>9} "
          + " ".join(f"{'DP ' + m:>{AUTO_WIDTH if m == 'auto' else WIDTH}}" for m in modes)
          + f" {'DP recipe':>10}")
    for task in tasks:
        print(measure(task, args.max_examples, args.repeats, device, modes), flush=True)
    for note in NOTES:
        print(f"  n/a {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
