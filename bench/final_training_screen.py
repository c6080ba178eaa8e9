"""Screen variants of the default run's final training on the same data: the labeled images plus the pseudo-labels
a finished `make run` wrote (its metrics.json names both), each variant trained alone (models.training.train, no
pipeline) and scored on the test split. Shorter than the run (--epochs), so several fit in a session; a variant that
does not beat the first row here is not worth a full `make run` per seed (bench/default_run.py).

  tools/env exec python bench/final_training_screen.py --run runs/<...>/longtail-fmnist-<time> --epochs 12 \\
      --variant "" --variant "loss=ce sampler=class_balanced" --variant "augment=crop,flip,erase"

A variant is space-separated train.* settings over the run's own (logit-adjusted loss, crop + flip, resnet8).
--init base starts every variant from the run's base model (its classifier.weights.npz, written when the run had
semi.pseudo_label.init=base), as the default preset's final Trainer does; --output names another table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import evaluate, write_result  # noqa: E402
from models import config, training  # noqa: E402
from models.label_stats import derive_label_stats  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True, help="a default run's output folder (metrics.json)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--variant", action="append", default=[])
    p.add_argument("--init", choices=("scratch", "base"), default="scratch")
    p.add_argument("--output", default="bench/results/final_training_screen.md")
    a = p.parse_args()
    with open(os.path.join(a.run, "metrics.json")) as f:
        m = json.load(f)
    files = m["training"]["training_files"]
    if not files["pseudo_labeled"]:
        raise SystemExit(f"{a.run}: the final Trainer trained without pseudo-labels; nothing to screen on")
    names = m["label_stats"]["class_names"]
    stats = derive_label_stats(m["training"]["training_class_counts"], names)
    base = dict(m["config"]["train"], epochs=a.epochs)
    base["augment"] = m["training"]["config"]["augment"]  # resolved (crop,flip for Fashion-MNIST)
    fields = config.leaf_paths(config.TrainConfig)
    test_files = os.path.join(m["data"]["data_dir"], "test", "*")
    init = os.path.join(m["pseudo_labels"]["base_model_uri"], "Format-Serving") if a.init == "base" else None
    rows = []
    for variant in a.variant or [""]:
        settings = dict(base)
        for kv in variant.split():
            k, v = kv.split("=", 1)
            settings[k] = config.parse_value(v, fields[k])
        cfg = config.from_dict(config.TrainConfig, settings, "train.")
        t0 = time.time()
        with tempfile.TemporaryDirectory() as d:
            model, _ = training.train(cfg, files["labeled"], stats, [28, 28, 1], d, pseudo_files=files["pseudo_labeled"],
                                      init_weights=init)
        seconds = time.time() - t0
        r = evaluate(model, test_files, [28, 28, 1], stats)
        rows.append((variant or "(the run's settings)", r, seconds))
        print(json.dumps({"variant": variant, "balanced_accuracy": r["balanced_accuracy"],
                          "worst_class_recall": r["worst_class_recall"], "seconds": seconds}), flush=True)
    lines = ["| variant | balanced acc | worst class (recall) | " + " | ".join(names) + " | train s |",
             "|---" * (4 + len(names)) + "|"]
    for variant, r, seconds in rows:
        lines.append(f"| {variant} | {r['balanced_accuracy']:.4f} | {names[r['worst_class']]} ({r['worst_class_recall']:.3f}) | "
                     + " | ".join(f"{v:.3f}" for v in r["per_class_recall"]) + f" | {seconds:.0f} |")
    start = "from the run's base model" if init else "from scratch"
    write_result(a.output, "Screening the default run's final training",
                 f"Labeled + pseudo-labeled images of `{a.run}` ({sum(stats['class_counts'])} images), {a.epochs} epochs "
                 f"a variant, {start}, one seed (the run's), test split (10,000 images).", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
