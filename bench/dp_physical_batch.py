"""Peak memory of one DP-SGD epoch with and without a physical-batch limit, side by side.

Usage::

    python bench/dp_physical_batch.py [--task icd-minilm] [--batch 128] [--limits 0,32,8]
                                      [--max-examples 256]

Why: per-example gradients take (batch × trainable parameters) floats, so the large logical
batches of the DP recipes (docs/privacy.md § DP recipes and curves) can outgrow a node's
memory; ``max-physical-batch`` (``fedmed node start --max-physical-batch``) splits each
batch into parts with the same mechanism (``fedmed.privacy.trainer``). Each limit runs in a
fresh process (peak resident memory is per process): the first site's first
``--max-examples`` training examples, one epoch of DP-SGD (σ 1, clip 1, ``auto``, a fixed
secret seed, so every run draws the same sample and noise) at logical batch ``--batch``.
Printed per limit: the largest forward pass, peak resident memory before and after training
and the difference, wall seconds, and the largest difference of the trained weights from
the unlimited run's (only the order of additions differs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def peak_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_once(task: str, batch: int, limit: int, max_examples: int, out: Path) -> None:
    """One measured run (the child process): weights to ``out``.npz, numbers to ``out``.json."""
    import torch
    from torch.utils.data import Subset

    from fedmed.privacy.trainer import DPTrainer, poisson_schedule
    from fedmed.tasks import get_task
    from fedmed.training.loop import TrainSettings, get_weights, train_round

    torch.set_num_threads(1)
    pack = get_task(task)
    train = pack.load_site(pack.site_names()[0], None, 0).train
    data = Subset(train, range(min(max_examples, len(train))))  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = pack.build_model()
    passes: list[int] = []
    model.register_forward_pre_hook(lambda _, inputs: passes.append(len(inputs[0])))
    rate, steps = poisson_schedule(len(data), batch)
    trainer = DPTrainer(1.0, rate, steps, 1.0, pack.loss, task=task, secret_seed=0,
                        max_physical_batch=limit)
    settings = TrainSettings(local_epochs=1, batch_size=batch, lr=pack.default_lr, seed=0)
    before = peak_mb()
    start = time.perf_counter()
    train_round(pack, model, data, settings, torch.device("cpu"), wrap=trainer.wrap)
    seconds = time.perf_counter() - start
    trainer.verify()
    np.savez(out.with_suffix(".npz"), *get_weights(model))
    out.with_suffix(".json").write_text(json.dumps({
        "examples": len(data), "largest_pass": max(passes), "mode": trainer.mode_used,
        "before_mb": before, "after_mb": peak_mb(), "seconds": seconds,
    }))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="icd-minilm")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--limits", default="0,32,8", help="comma-separated; 0: no limit")
    parser.add_argument("--max-examples", type=int, default=256)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limits = [int(v) for v in args.limits.split(",")]
    if args.child:
        train_once(args.task, args.batch, limits[0], args.max_examples, args.child)
        return 0
    print(f"{args.task}: one DP-SGD epoch at logical batch {args.batch}, 1 CPU thread")
    print(f"{'limit':>6} {'largest pass':>12} {'peak MB before':>14} {'peak MB after':>13} "
          f"{'training MB':>11} {'s':>7} {'max |Δw| vs no limit':>20}")
    with tempfile.TemporaryDirectory() as folder:
        reference: list[np.ndarray] | None = None
        for limit in limits:
            out = Path(folder) / f"limit-{limit}"
            subprocess.run([sys.executable, __file__, "--task", args.task, "--batch",
                            str(args.batch), "--limits", str(limit), "--max-examples",
                            str(args.max_examples), "--child", str(out)], check=True)
            row = json.loads(out.with_suffix(".json").read_text())
            with np.load(out.with_suffix(".npz")) as saved:
                weights = [saved[name] for name in saved.files]
            reference = weights if reference is None else reference
            change = max(float(np.abs(a - b).max())
                         for a, b in zip(reference, weights, strict=True))
            print(f"{limit or 'none':>6} {row['largest_pass']:>12} {row['before_mb']:>14.0f} "
                  f"{row['after_mb']:>13.0f} {row['after_mb'] - row['before_mb']:>11.0f} "
                  f"{row['seconds']:>7.1f} {change:>20.2e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
