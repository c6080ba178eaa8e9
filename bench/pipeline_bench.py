"""`make bench`: CE vs logit-adjusted through the whole pipeline (default preset), one table.

Usage: tools/env exec python bench/pipeline_bench.py [--preset default] [--losses ce,logit_adjusted] [--seeds 0]
Writes bench/results/pipeline_<preset>.md with the table, the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import write_result  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.local_runner import run_pipeline  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="default")
    p.add_argument("--losses", default="ce,logit_adjusted")
    p.add_argument("--seeds", default="0")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    rows = []
    for loss in a.losses.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            overrides = dict(o.split("=", 1) for o in a.overrides)
            overrides.update({"name": f"bench-{a.preset}-{loss}-s{seed}", "train.loss": loss, "train.seed": str(seed),
                              "runs_root": "runs/bench", "serving_root": "runs/bench/serving",
                              # a benchmark measures every run from scratch and pushes nothing of value
                              "enable_cache": "false", "gate.min_balanced_accuracy": "0", "gate.min_per_class_recall": "0"})
            cfg = load_config(a.preset, overrides)
            out = run_pipeline(cfg)
            m = json.load(open(os.path.join(out, "metrics.json")))
            t, tr = m["timings"], m["training"]
            epochs = tr["epochs"]
            rows.append({"loss": loss, "seed": seed, "bal": m["balanced_accuracy"], "many": m["many_shot_accuracy"],
                         "medium": m["medium_shot_accuracy"], "few": m["few_shot_accuracy"], "worst": m["worst_class"],
                         "worst_recall": m["worst_class_recall"], "s_per_epoch": tr["train_seconds"] / epochs,
                         "img_per_s": tr["images_per_second"], "pipeline_s": t["pipeline_seconds"],
                         "train_s": t["train_seconds"], "other_s": t["other_seconds"], "out": out})
    lines = ["| loss | seed | balanced acc | many | medium | few | worst class (recall) | train s/epoch | images/s "
             "| pipeline wall s | training s | everything else s |", "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['seed']} | {r['bal']:.4f} | {r['many']:.3f} | {r['medium']:.3f} | {r['few']:.3f} "
                     f"| {r['worst']} ({r['worst_recall']:.3f}) | {r['s_per_epoch']:.1f} | {r['img_per_s']:.0f} "
                     f"| {r['pipeline_s']:.0f} | {r['train_s']:.0f} | {r['other_s']:.0f} |")
    for loss in a.losses.split(","):
        bals = [r["bal"] for r in rows if r["loss"] == loss]
        if len(bals) > 1:
            lines.append(f"\n{loss}: balanced accuracy mean {statistics.mean(bals):.4f}, sd {statistics.stdev(bals):.4f} "
                         f"over {len(bals)} seeds")
    write_result(f"bench/results/pipeline_{a.preset}.md", f"Pipeline benchmark ({a.preset} preset)",
                 "Test split of Fashion-MNIST-LT (rho=100, n_max=5000); train s/epoch and images/s from the Trainer's own "
                 "timer; pipeline wall time split into training and everything else (ingestion, validation, Beam "
                 "statistics, evaluation, push).", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
