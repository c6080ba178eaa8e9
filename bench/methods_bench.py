"""`make bench-methods`: the re-balancing methods side by side on Fashion-MNIST-LT (issue #4).

Same backbone, schedule, data and seed for every method; each trains with models.training.train on
the prepared TFRecords (the Trainer's own code, without the TFX pipeline around it) and is scored on
the balanced test split. Post-hoc logit adjustment, cRT and tau-norm reuse the CE model (that is
what they are: fixes applied to a CE-trained network).

Usage (inside the environment):
  tools/env exec python bench/methods_bench.py --rho 100 [--epochs 12] [--seeds 0] [--methods ce,ldam_drw,...]
Writes bench/results/methods_rho<rho>.md (table, command, machine, date) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from bench.common import evaluate, prepared, write_result  # noqa: E402
from models.config import TrainConfig  # noqa: E402
from models.heads import tau_normalized_model  # noqa: E402
from models.losses import logit_adjust  # noqa: E402
from models.training import decouple, train  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402

# method -> (TrainConfig overrides, how to get it: "train" or from the CE model)
METHODS = {
    "ce": ({}, "train"),
    "cb_reweight": ({"class_weighting": "effective_number"}, "train"),
    "cb_resample": ({"sampler": "class_balanced"}, "train"),
    "focal": ({"loss": "focal", "focal_gamma": 1.0}, "train"),
    "ldam": ({"loss": "ldam"}, "train"),
    "ldam_drw": ({"loss": "ldam", "drw_epoch": "0.8"}, "train"),  # the paper: epoch 160 of 200
    "logit_adjusted": ({"loss": "logit_adjusted"}, "train"),
    "posthoc_la": ({}, "ce"),
    "balanced_softmax": ({"loss": "balanced_softmax"}, "train"),
    "crt": ({"decoupling": "crt"}, "ce"),
    "tau_norm": ({"decoupling": "tau_norm"}, "ce"),
}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rho", type=float, default=100.0)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--decoupling-epochs", type=int, default=4)
    p.add_argument("--seeds", default="0")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="smoke-testing the script only")
    a = p.parse_args()
    data = ensure_data(load_config("default", {"data.rho": str(a.rho)}))
    manifest, stats, split_files = prepared(data)
    files, test_files, shape = split_files["labeled"], split_files["test"], manifest["image_shape"]
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        base = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, seed=seed,
                           decoupling_epochs=a.decoupling_epochs, max_steps_per_epoch=a.max_steps_per_epoch)
        ce_model, ce_seconds = None, None
        for method in a.methods.split(","):
            overrides, how = METHODS[method]
            overrides = dict(overrides)
            if overrides.get("drw_epoch") == "0.8":
                overrides["drw_epoch"] = int(round(0.8 * a.epochs))
            cfg = dataclasses.replace(base, **overrides)
            print(f"[bench] rho={a.rho:g} seed={seed} {method}", file=sys.stderr, flush=True)
            t0 = time.time()
            offset = None
            with tempfile.TemporaryDirectory() as run_dir:
                if how == "train":
                    model, _ = train(cfg, files, stats, shape, run_dir)
                    seconds = time.time() - t0
                    if method == "ce":
                        ce_model, ce_seconds = model, seconds
                else:
                    if ce_model is None:
                        ce_model, _ = train(base, files, stats, shape, run_dir)
                        ce_seconds = time.time() - t0
                    if method == "posthoc_la":
                        model, offset = ce_model, True
                    elif method == "tau_norm":
                        model = tau_normalized_model(ce_model, 1.0)
                    else:
                        model, _ = decouple(ce_model, cfg, files, stats, shape)
                    seconds = ce_seconds + (time.time() - t0)
            m = evaluate(model, test_files, shape, stats,
                         (lambda out: logit_adjust(out, stats["class_priors"])) if offset else None)
            rows.append({"method": method, "seed": seed, "bal": m["balanced_accuracy"], "many": m["many_shot_accuracy"],
                         "medium": m["medium_shot_accuracy"], "few": m["few_shot_accuracy"],
                         "worst": stats["class_names"][m["worst_class"]], "worst_recall": m["worst_class_recall"],
                         "seconds": seconds})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    lines = ["| method | seeds | balanced acc (sd) | many | medium | few | worst class (recall) | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for method in a.methods.split(","):
        rs = [r for r in rows if r["method"] == method]
        bal = [r["bal"] for r in rs]
        sd = f" ({statistics.stdev(bal):.3f})" if len(bal) > 1 else ""

        def mean(k, rs=rs):
            vals = [r[k] for r in rs if r[k] is not None]
            return statistics.mean(vals) if vals else None

        worst = min(rs, key=lambda r: r["worst_recall"])
        lines.append(f"| {method} | {len(rs)} | {statistics.mean(bal):.4f}{sd} | {fmt(mean('many'))} | {fmt(mean('medium'))} "
                     f"| {fmt(mean('few'))} | {worst['worst']} ({worst['worst_recall']:.3f}) | {mean('seconds'):.0f} |")
    write_result(f"bench/results/methods_rho{a.rho:g}.md", f"Imbalance methods, Fashion-MNIST-LT rho={a.rho:g}",
                 f"resnet8, batch 128, SGD momentum 0.9, cosine from 0.05, weight decay 5e-4, crop+flip augmentation, "
                 f"{a.epochs} epochs (cRT: {a.decoupling_epochs} more on class-balanced samples). Balanced test split "
                 f"(1000 a class). Shot groups: {stats['shot_groups']} (thresholds {stats['shot_thresholds']}). "
                 "`train s` of post-hoc LA, cRT and tau-norm includes the CE training they start from.", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
