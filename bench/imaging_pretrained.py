"""What the pretrained backbone's choices cost: BatchNorm frozen vs GroupNorm, and each schedule.

Usage::

    python bench/imaging_pretrained.py [--size 128] [--epochs 10] [--sites academic,...]
                                       [--schedules scratch,head,last-blocks]
                                       [--norms frozen-bn,groupnorm] [--epsilon 1]

Two parts:

1. ImageNet: the top-5 of matplotlib's ``grace_hopper.jpg`` (224², ImageNet normalisation)
   with BatchNorm frozen at ImageNet's statistics and with GroupNorm in its place (pretrained
   affine, no retraining). Frozen BatchNorm is the pretrained function exactly; GroupNorm is
   not, and this shows how far from it a network starts.
2. The imaging-cls task: for each (schedule, norm) — ``scratch`` is the pack's
   ``densenet-small`` trained from scratch, for comparison — every listed site trains locally on its
   own training split for ``--epochs`` epochs (batch 32, lr 0.1, clip 0.5: the example
   federation's settings) without DP and with DP-SGD at ``--epsilon`` (δ = 1e-5, σ
   calibrated by Opacus' RDP accountant for all the epochs); printed are the mean test AUC over
   the sites, the trainable parameters, the seconds per image to encode a site (the frozen
   part, once per site; cached encodings are deleted first so it is really timed) and the
   median seconds of a DP epoch after the first (the first also picks Opacus' mode).

The bench keeps its state (encodings, gate folders) in ``<state>/bench/imaging-pretrained``,
apart from runs and studies, whose cached encodings it would otherwise delete.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from fedmed.config import FederationConfig
from fedmed.privacy.trainer import DPTrainer, poisson_schedule
from fedmed.state import STATE_ENV, state_dir, state_root
from fedmed.tasks import get_task
from fedmed.tasks.efficientnet_lite import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    freeze_batch_norm,
    imagenet_class_names,
    pretrained_lite0,
    to_group_norm,
)
from fedmed.training.loop import TrainSettings, train_round

BATCH, LR, CLIP, DELTA = 32, 0.1, 0.5, 1e-5


def imagenet_part() -> None:
    import matplotlib.cbook as cbook
    import numpy as np
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        photo = Image.open(handle).convert("RGB").resize((224, 224), Image.BILINEAR)
    pixels = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    image = ((pixels - mean) / std)[None]
    names = imagenet_class_names()
    for label, model in (("frozen-bn", freeze_batch_norm(pretrained_lite0())),
                         ("groupnorm", to_group_norm(pretrained_lite0()))):  # fmt: skip
        with torch.no_grad():
            top = model.eval()(image).softmax(dim=1)[0].topk(5)
        ranked = ", ".join(f"{names[i]} {p:.3f}" for p, i in zip(top.values, top.indices,
                                                                   strict=True))  # fmt: skip
        print(f"grace_hopper top-5, {label:<9}: {ranked}")


def task_part(args: argparse.Namespace) -> None:
    from opacus.accountants.utils import get_noise_multiplier

    print(f"\nimaging-cls, {args.size} px, {args.epochs} local epochs per site, sites "
          f"{args.sites}; DP at ε = {args.epsilon:g}, δ = {DELTA:g}, clip {CLIP}")  # fmt: skip
    print(f"{'schedule':<12} {'norm':<10} {'trainable':>10} {'encode s/img':>13} "
          f"{'DP s/epoch':>11} {'AUC no DP':>10} {'AUC DP':>8}")
    for schedule in args.schedules.split(","):
        for norm in args.norms.split(",") if schedule != "scratch" else ["-"]:
            settings = {"task": "imaging-cls", "image-size": args.size}
            if schedule != "scratch":
                settings |= {"backbone": "efficientnet-lite0", "fine-tune": schedule,
                             "backbone-norm": norm}  # fmt: skip
            pack = get_task(FederationConfig.from_run_config(settings).task)
            for kept in (state_root() / "encodings").glob("lite0-*.pt"):
                kept.unlink()  # time the encoding itself, not a cache read
            aucs: dict[bool, list[float]] = {False: [], True: []}
            encode_seconds, images, epoch_seconds = 0.0, 0, []
            for site in args.sites.split(","):
                start = time.perf_counter()
                data = pack.load_site(site, None, seed=0)
                encode_seconds += time.perf_counter() - start
                images += len(data.train) + len(data.test)  # type: ignore[arg-type]
                rate, steps = poisson_schedule(len(data.train), BATCH)  # type: ignore[arg-type]
                sigma = get_noise_multiplier(target_epsilon=args.epsilon, target_delta=DELTA,
                                             sample_rate=rate, steps=steps * args.epochs,
                                             accountant="rdp")  # fmt: skip
                for private in (False, True):
                    torch.manual_seed(0)
                    model = pack.build_model()
                    for epoch in range(args.epochs):
                        trainer = (DPTrainer(sigma, rate, steps, CLIP, pack.loss) if private
                                   else None)  # fmt: skip
                        # Opacus hooks a model once; a node builds its model every round,
                        # so each epoch here trains a fresh copy carrying the weights on.
                        weights, model = model.state_dict(), pack.build_model()
                        model.load_state_dict(weights)
                        start = time.perf_counter()
                        settings = TrainSettings(1, BATCH, LR, seed=epoch)
                        train_round(pack, model, data.train, settings, torch.device("cpu"),
                                    wrap=trainer.wrap if trainer else None)  # fmt: skip
                        if private and epoch:
                            epoch_seconds.append(time.perf_counter() - start)
                    scores = pack.evaluate(model, data.test, torch.device("cpu"))
                    aucs[private].append(scores["auc"])
            trainable = sum(p.numel() for p in pack.build_model().parameters())
            per_image = encode_seconds / images if pack.settings.encodes else float("nan")
            dp_epoch = statistics.median(epoch_seconds) if epoch_seconds else float("nan")
            print(f"{schedule:<12} {norm:<10} {trainable:>10,} {per_image:>13.4f} "
                  f"{dp_epoch:>11.1f} {statistics.mean(aucs[False]):>10.3f} "
                  f"{statistics.mean(aucs[True]):>8.3f}", flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--sites", default="academic,community,mobile,legacy")
    parser.add_argument("--schedules", default="scratch,head,last-blocks")
    parser.add_argument("--norms", default="frozen-bn,groupnorm")
    parser.add_argument("--epsilon", type=float, default=1.0)
    args = parser.parse_args(argv)
    os.environ[STATE_ENV] = str(state_dir("bench", "imaging-pretrained"))
    imagenet_part()
    task_part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
