"""`make bench-daso`: supervised vs FixMatch vs FixMatch+DASO on Fashion-MNIST-LT (issue #8).

Protocol of the DASO paper's CIFAR-10-LT setting, on Fashion-MNIST: labeled head N1=1500 with
imbalance rho=100, unlabeled head M1=3000 with rho_u=100 (same profile) or rho_u=1 (uniform pool);
each method also with the logit-adjusted labeled loss (tau=1), as the paper pairs DASO with it.
Every method trains the same resnet8 for the same number of steps (batch 128 labeled; mu=2, i.e. 256
unlabeled a step for the semi-supervised ones) with models.training.train / models.semi.train_semi,
the Trainer's own code, and is scored on the balanced test split (1000 a class). Pseudo-label recall
of the three rarest labeled classes (ranked by count) is measured on the pool, against its
evaluation-only true classes, after the last epoch.

Usage (inside the environment):
  tools/env exec python bench/daso_bench.py [--rho 100] [--rho-u 100,1] [--epochs 30] [--methods ...]
Writes bench/results/daso_rho<rho>.md (table, command, machine, date) unless --out says otherwise.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from bench.common import evaluate, pool_arguments, prepared  # noqa: E402
from components.data.longtail import exponential_profile  # noqa: E402
from models import modes  # noqa: E402
from models.config import DasoConfig, FixMatchConfig, SemiConfig, TrainConfig  # noqa: E402
from models.semi import load_pool_truth, train_semi  # noqa: E402
from models.training import train  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402

# method -> (semi.method, labeled loss)
METHODS = {
    "supervised": (modes.SUPERVISED, "ce"),
    "supervised_la": (modes.SUPERVISED, "logit_adjusted"),
    "fixmatch": ("fixmatch", "ce"),
    "fixmatch_la": ("fixmatch", "logit_adjusted"),
    "daso": ("daso", "ce"),
    "daso_la": ("daso", "logit_adjusted"),
}


def prepare_pool_setting(a, rho_u: float) -> str:
    pool_size = int(sum(exponential_profile(a.pool_head, 10, rho_u, list(range(10)))))
    overrides = {"data.rho": str(a.rho), "data.n_max": str(a.n_max), "data.rho_u": str(rho_u),
                 "data.unlabeled_size": str(pool_size), "data.seed": str(a.data_seed)}
    return ensure_data(load_config("default", overrides))


def run_pool_setting(a, rho_u: float) -> tuple[list[dict], dict]:
    data = prepare_pool_setting(a, rho_u)
    manifest, stats, split_files = prepared(data)
    files, pool_files, test_files = split_files["labeled"], split_files["unlabeled"], split_files["test"]
    shape = manifest["image_shape"]
    rarest = stats["classes_by_frequency"][-3:]
    pool_setting = {"rho": manifest["rho"], "rho_u": manifest["rho_u"],
                    "same_order": manifest["unlabeled_class_order"] == manifest["class_order"]}
    truth = load_pool_truth(data, manifest["splits"]["unlabeled"], shape, a.eval_pool_size, a.seed)
    rows = []
    for method in a.methods.split(","):
        semi_method, loss = METHODS[method]
        cfg = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, batch_size=128, loss=loss, seed=a.seed,
                          max_steps_per_epoch=a.max_steps_per_epoch)
        print(f"[bench-daso] rho={a.rho:g} rho_u={rho_u:g} {method}", file=sys.stderr, flush=True)
        t0 = time.time()
        with tempfile.TemporaryDirectory() as run_dir:
            if semi_method == modes.SUPERVISED:
                model, history = train(cfg, files, stats, shape, run_dir)
                summary, images_per_step = None, cfg.batch_size
            else:
                semi = SemiConfig(method=semi_method, fixmatch=FixMatchConfig(mu=a.mu),
                                  daso=DasoConfig(warmup_steps=a.daso_warmup))
                model, history, summary = train_semi(cfg, semi, files, pool_files, stats, shape, run_dir,
                                                     pool_truth=truth, pool_setting=pool_setting)
                images_per_step = summary["labeled_batch"] + summary["unlabeled_batch"]
        seconds = time.time() - t0
        n = stats["num_examples"]
        steps = a.epochs * min(-(-n // cfg.batch_size), a.max_steps_per_epoch or 10**9)
        # the steady-state step time: the first epoch carries the graph tracing
        steady = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
        step_seconds = sum(steady) / (len(steady) * steps / a.epochs)
        m = evaluate(model, test_files, shape, stats)
        recall = (summary or {}).get("pseudo_label_recall")
        rows.append({
            "method": method, "rho_u": rho_u, "bal": m["balanced_accuracy"], "few": m["few_shot_accuracy"],
            "worst": stats["class_names"][m["worst_class"]], "worst_recall": m["worst_class_recall"],
            "pl_recall_rarest": None if recall is None else [recall[c] for c in rarest],
            "mask_rate_rarest": None if summary is None else [summary["mask_rate"][c] for c in rarest],
            "images_per_second": images_per_step / step_seconds, "step_seconds": step_seconds, "seconds": seconds,
            "warmup_steps": (summary or {}).get("warmup_steps"), "dist_temperature": (summary or {}).get("dist_temperature"),
        })
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    pool = manifest["splits"]["unlabeled"]["hidden_per_class_counts_from_train"]
    info = {"data": data, "labeled": stats["class_counts"], "pool": pool,
            "rarest": [stats["class_names"][c] for c in rarest], "steps": steps, "shot_groups": stats["shot_groups"]}
    return rows, info


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| pool | method | balanced acc | few-shot acc | worst class (recall) | pseudo-label recall, 3 rarest | "
             "mask rate, 3 rarest | images/s (s/step) | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pl = "-" if r["pl_recall_rarest"] is None else " / ".join(fmt(v, 2) for v in r["pl_recall_rarest"])
        mr = "-" if r["mask_rate_rarest"] is None else " / ".join(fmt(v, 2) for v in r["mask_rate_rarest"])
        lines.append(f"| rho_u={r['rho_u']:g} | {r['method']} | {fmt(r['bal'], 4)} | {fmt(r['few'])} | {r['worst']} "
                     f"({fmt(r['worst_recall'])}) | {pl} | {mr} | {r['images_per_second']:.0f} ({r['step_seconds']:.2f}) | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = pool_arguments("100,1", 3000, "unlabeled head class (the paper's M1)",
                       "passes over the labeled set (30 steps each at N1=1500, rho=100)")  # one table block a rho_u
    p.add_argument("--mu", type=int, default=2)
    p.add_argument("--daso-warmup", type=int, default=None, help="DASO warm-up steps (default: 2%% of the steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--eval-pool-size", type=int, default=5000,
                   help="pool images (a fixed random subset) scored each epoch for pseudo-label recall")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="trying the script out only")
    p.add_argument("--out", default=None, help="results file (default bench/results/daso_rho<rho>.md)")
    a = p.parse_args()
    rows, infos = [], {}
    for rho_u in [float(r) for r in a.rho_u.split(",")]:
        r, info = run_pool_setting(a, rho_u)
        rows += r
        infos[rho_u] = info
    text = table(rows)
    print(text)
    path = a.out or f"bench/results/daso_rho{a.rho:g}.md"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    any_info = next(iter(infos.values()))
    settings = "; ".join(f"rho_u={k:g}: pool {v['pool']} ({sum(v['pool'])} images)" for k, v in infos.items())
    defaults = SemiConfig()
    with open(path, "w") as f:
        f.write(f"# Supervised vs FixMatch vs FixMatch+DASO, Fashion-MNIST-LT rho={a.rho:g}\n\n"
                f"Command: `tools/env exec python bench/daso_bench.py {' '.join(sys.argv[1:])}`\n\n"
                f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}, Keras backend "
                f"{keras.backend.backend()}; date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n\n"
                f"Labeled: {any_info['labeled']} (N1={a.n_max}, rho={a.rho:g}); {settings}. Rarest three labeled classes: "
                f"{any_info['rarest']}. resnet8, batch 128 labeled (+ {a.mu}x128 unlabeled for FixMatch/DASO), "
                f"{any_info['steps']} steps ({a.epochs} passes over the labeled set), SGD momentum 0.9, cosine from 0.05, "
                f"weight decay 5e-4, seed {a.seed}. FixMatch: threshold {defaults.fixmatch.threshold}, lambda_u "
                f"{defaults.fixmatch.lambda_u}, EMA {defaults.fixmatch.ema_decay} (evaluated and exported). DASO: warm-up "
                f"{'2% of the steps' if a.daso_warmup is None else f'{a.daso_warmup} steps'}, T_dist 1.5 (rho_u = rho) or "
                f"0.3 (rho_u != rho), T_proto {defaults.daso.proto_temperature}, queue "
                f"{defaults.daso.queue_size} a class. `_la`: logit-adjusted labeled loss (tau 1). Balanced test split "
                f"(1000 a class); few-shot group {any_info['shot_groups']['few']}. Pseudo-label recall and mask rate: "
                f"the last epoch's pseudo-labels of {a.eval_pool_size or 'all'} un-augmented pool images (a fixed random "
                f"subset) against their true classes. images/s: "
                f"labeled + unlabeled images drawn a step over the steady-state step time (an unlabeled image passes "
                f"the network in two views).\n\n{text}\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
