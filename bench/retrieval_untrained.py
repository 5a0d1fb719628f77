"""The floor of the imaging-retrieval tables: an untrained embedding, scored like the others.

A randomly initialised network already groups images by brightness and blob size a little, so
mAP@10 of "no training" is not the class share; docs/retrieval.md reads the trained rows
against this one. Each site's test images query its own training images (the pack's
``evaluate``, the same scoring as the studies). Prints a Markdown table.

    nice .venv/bin/python bench/retrieval_untrained.py [--seeds 3] [--image-size 32]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fedmed.config import TaskRef
from fedmed.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="initialisations (default 3)")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    pack = get_task(TaskRef("imaging-retrieval", {"image-size": args.image_size}))
    cpu = torch.device("cpu")
    print(f"untrained imaging-retrieval embedding, mean ± std over {args.seeds} initialisations\n")
    print("| site | " + " | ".join(pack.metrics) + " |")
    print("|---|" + "---:|" * len(pack.metrics))
    for site in pack.site_names():
        test = pack.load_site(site, None, 0).test
        scores = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            scores.append(pack.evaluate(pack.build_model(), test, cpu))
        cells = [f"{np.mean([s[m] for s in scores]):.3f} ± {np.std([s[m] for s in scores]):.3f}"
                 for m in pack.metrics]  # fmt: skip
        print(f"| {site} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
