"""Follow-up of `make bench-ssp`: does the supervised learning rate wash the pre-training out?

Trains CE from random initial weights and from a pre-trained backbone (a folder with
backbone.weights.npz, e.g. kept from bench/ssp_bench.py --keep) at the given learning rates, same data,
schedule length and seed as the bench, and prints one table row per run (balanced test split).

Usage: tools/env exec python bench/ssp_finetune_lr.py --backbone-dir DIR [--lrs 0.01] [--epochs 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import evaluate, prepared  # noqa: E402
from models.config import TrainConfig  # noqa: E402
from models.training import train  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backbone-dir", required=True)
    p.add_argument("--rho", type=float, default=100.0)
    p.add_argument("--lrs", default="0.01")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    data = ensure_data(load_config("default", {"data.rho": str(a.rho)}))
    manifest, stats, files = prepared(data)
    labeled, test, shape = files["labeled"], files["test"], manifest["image_shape"]
    print("| init | lr | balanced acc | many | medium | few | worst class (recall) | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for lr in [float(x) for x in a.lrs.split(",")]:
        for init in ("random", "pre-trained"):
            cfg = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, seed=a.seed,
                              learning_rate=lr)
            t0 = time.time()
            with tempfile.TemporaryDirectory() as run_dir:
                model, _ = train(cfg, labeled, stats, shape, run_dir,
                                 backbone_weights=a.backbone_dir if init == "pre-trained" else None)
            m = evaluate(model, test, shape, stats)
            print(f"| {init} | {lr:g} | {m['balanced_accuracy']:.4f} | {m['many_shot_accuracy']:.3f} "
                  f"| {m['medium_shot_accuracy']:.3f} | {m['few_shot_accuracy']:.3f} "
                  f"| {stats['class_names'][m['worst_class']]} ({m['worst_class_recall']:.3f}) | {time.time() - t0:.0f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
