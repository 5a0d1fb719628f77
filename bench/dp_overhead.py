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
mode a node picks; ``functorch`` on request). Ratios are DP / non-DP, median over
``--repeats`` interleaved runs (see :func:`measure`). ``--device cuda`` measures the same on
a GPU (the clock stops only after the GPU has finished: :func:`torch.cuda.synchronize`).
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

from fedmed.errors import ConfigError
from fedmed.privacy.trainer import GRAD_SAMPLE_MODES, DPTrainer, poisson_schedule
from fedmed.tasks import TaskPack, get_task, task_names
from fedmed.training.loop import TrainSettings, train_round

MODES = ("hooks", "ew", "ghost", "auto")
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
    rate, steps = poisson_schedule(len(data), settings.batch_size)

    def maker(mode: str) -> Callable[[], DPTrainer]:
        return lambda: DPTrainer(1.0, rate, steps * epochs, 1.0, pack.loss,
                                 grad_sample_mode=mode, task=task)

    runners: dict[str, Callable[[], DPTrainer] | None] = {"plain": None}
    failures: dict[str, str] = {}
    for mode in modes:
        try:
            run_once(pack, data, settings, maker(mode), device)  # warm-up; does the mode work?
            runners[mode] = maker(mode)
        except (ConfigError, RuntimeError, NotImplementedError, TypeError) as exc:
            failures[mode] = "n/a"  # e.g. ew on grouped convolutions; reason in the footer
            NOTES.append(f"{task} {mode}: {str(exc).splitlines()[0][:90]}")
    times: dict[str, list[float]] = {name: [] for name in runners}
    used = "-"
    for _ in range(repeats):
        for name, make in runners.items():
            seconds, mode = run_once(pack, data, settings, make, device)
            times[name].append(seconds)
            used = mode if name == "auto" else used
    cells = [f"{task:<12} {site:<12} {len(data):>6} "
             f"{1000 * statistics.median(times['plain']) / epochs:>9.1f}"]
    for mode in modes:
        if mode in failures:
            cells.append(f"{failures[mode]:>14}")
            continue
        ratio = statistics.median(
            d / p for d, p in zip(times[mode], times["plain"], strict=True)
        )
        label = f"{ratio:.2f}x" + (f" ({used})" if mode == "auto" else "")
        cells.append(f"{label:>14}")
    return " ".join(cells)


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
          + " ".join(f"{'DP ' + m:>14}" for m in modes))
    for task in tasks:
        print(measure(task, args.max_examples, args.repeats, device, modes), flush=True)
    for note in NOTES:
        print(f"  n/a {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
