"""What a second local worker buys or costs (#17): the Trainer's run_fn on the default preset's labeled data
(Fashion-MNIST-LT rho=100), one process against two workers on localhost (MultiWorkerMirroredStrategy, ring
all-reduce), each configuration trained, exported and scored on the balanced test split.

Rows: ``none`` (one process, Keras' model.fit: what every run uses today); ``mirrored`` (one process, one CPU
replica, the custom data-parallel loop: its cost without a peer); ``2 workers, global batch`` (the 128 split
64 + 64, the single process's optimisation); ``2 workers, per-replica batch`` (128 each, global 256, learning
rate x2: the usual way to scale out). Throughput counts every image of epochs 2.. (epoch 1 also decodes and
caches the PNGs and builds the graphs); "wall" is the whole run_fn, worker start-up and export included.

Usage (inside the environment):
  tools/env exec python bench/distribute_bench.py [--epochs 4] [--seeds 0]
Writes bench/results/distribute.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import evaluate, write_result  # noqa: E402
from components.data.prepare import load_manifest  # noqa: E402
from models.label_stats import derive_label_stats  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402

CONFIGS = [
    ("none (model.fit, one process)", {"distribute": "none"}),
    ("mirrored (custom loop, one process)", {"distribute": "mirrored"}),
    ("2 workers, global batch 128 (64 + 64)", {"local_workers": 2}),
    ("2 workers, per-replica batch 128 (global 256, lr x2)", {"local_workers": 2, "batch_scaling": "per_replica",
                                                              "lr_scaling": "linear"}),
    # the global-256 run takes half the optimizer steps an epoch; twice the epochs gives it the others' step count
    ("2 workers, per-replica batch 128 (global 256, lr x2), twice the epochs",
     {"local_workers": 2, "batch_scaling": "per_replica", "lr_scaling": "linear", "epochs_factor": 2}),
]


def run(data: str, manifest: dict, stats: dict, settings: dict, epochs: int, seed: int) -> dict:
    import keras

    from models import trainer

    files = [os.path.join(data, f) for f in manifest["splits"]["labeled"]["files"]]
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        stats_path = os.path.join(tmp, "label_stats.json")
        with open(stats_path, "w") as f:
            json.dump(stats, f)
        settings = dict(settings)
        epochs *= settings.pop("epochs_factor", 1)
        train = {"epochs": epochs, "seed": seed, "augment": "crop,flip", **settings}  # the default preset's augment
        fn_args = types.SimpleNamespace(
            train_files=files, eval_files=None, serving_model_dir=os.path.join(tmp, "serving"),
            model_run_dir=os.path.join(tmp, "run"), base_model=None,
            custom_config={"train": train, "semi": {}, "pretrain": {}, "label_stats_path": stats_path,
                           "image_shape": manifest["image_shape"]})
        os.makedirs(fn_args.model_run_dir)
        t0 = time.time()
        trainer.run_fn(fn_args)
        wall = time.time() - t0
        with open(os.path.join(fn_args.model_run_dir, "training_summary.json")) as f:
            summary = json.load(f)
        model = keras.models.load_model(os.path.join(fn_args.model_run_dir, "model.keras"), compile=False)
        test = [os.path.join(data, f) for f in manifest["splits"]["test"]["files"]]
        scores = evaluate(model, test, manifest["image_shape"], stats)
    steady = [h["seconds"] for h in summary["history"][1:]]
    n = stats["num_examples"]
    return {"epochs": epochs, "wall_s": wall, "epoch1_s": summary["history"][0]["seconds"],
            "steady_s_per_epoch": float(np.mean(steady)),
            "images_per_s": n * len(steady) / sum(steady), "final_loss": summary["history"][-1]["loss"],
            "balanced_accuracy": scores["balanced_accuracy"], "distribute": summary["distribute"]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", default="0", help="comma list; the throughput rows are per seed")
    a = p.parse_args()
    data = ensure_data(load_config("default"))
    manifest = load_manifest(data)
    stats = derive_label_stats(manifest["splits"]["labeled"]["per_class_counts"], manifest["class_names"])
    rows = ["| configuration | seed | epochs | replicas | global batch | s/epoch (epochs 2..) | images/s | vs one process | "
            "epoch 1 s | wall s | final loss | test balanced acc. |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    results = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        base = None
        for name, settings in CONFIGS:
            print(f"[bench] {name}, seed {seed}", file=sys.stderr, flush=True)
            r = run(data, manifest, stats, settings, a.epochs, seed)
            results.append({"configuration": name, "seed": seed, **r})
            base = base or r["images_per_s"]
            d = r["distribute"]
            rows.append(f"| {name} | {seed} | {r['epochs']} | {d['replicas']} | {d.get('global_batch_size', 128)} | "
                        f"{r['steady_s_per_epoch']:.2f} | {r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | "
                        f"{r['epoch1_s']:.1f} | {r['wall_s']:.1f} | {r['final_loss']:.4f} | "
                        f"{r['balanced_accuracy']:.4f} |")
    description = (f"Trainer run_fn (models/trainer.py) on the default preset's labeled split ({stats['num_examples']} "
                   f"images, Fashion-MNIST-LT rho=100), resnet8, CE, SGD cosine 0.05, augment crop,flip, "
                   f"{a.epochs} epochs; workers are processes on this machine's 2 cores. images/s = images of epochs "
                   "2.. / their seconds; wall = the whole run_fn (worker start-up, the first epoch's decode, export). "
                   "Test balanced accuracy on the balanced test split (10k images) after this short schedule.")
    write_result("bench/results/distribute.md", "One process against two local workers", description, "\n".join(rows))
    with open("bench/results/distribute.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
