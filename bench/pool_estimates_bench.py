"""How well the pool estimates recover what the pool really holds (issue #7), and what the planner picks.

One CE base model (resnet8) trained on Fashion-MNIST-LT rho=100; the same labeled and validation
splits (same seed) with four unlabeled pools: rho_U in {1, 100} x relevance in {1.0, 0.5} (the rest of
the pool MNIST digits). For each pool the real PseudoLabeler executor (Beam, in memory) labels the
pool and estimates it; the table sets the estimates beside the truth from the manifest (which nothing
but this evaluation reads).

Usage (inside the environment):
  tools/env exec python bench/pool_estimates_bench.py [--epochs 5] [--max-steps-per-epoch N]
Writes bench/results/pool_estimates.md and prints the table.
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
from components.data.longtail import SplitSpec  # noqa: E402
from components.data.prepare import MANIFEST, prepare_from_source  # noqa: E402
from models.config import PlannerConfig, TrainConfig  # noqa: E402
from models.label_stats import derive_label_stats  # noqa: E402
from models.planner import PoolEstimates, plan  # noqa: E402
from models.pool_estimates import imbalance_ratio  # noqa: E402
from models.training import train  # noqa: E402
from pipeline.data_cli import default_data_dir  # noqa: E402

POOLS = [(1.0, 1.0), (1.0, 0.5), (100.0, 1.0), (100.0, 0.5)]  # (rho_U, relevance)


def prepared(rho_u: float, relevance: float) -> str:
    spec = SplitSpec(rho_u=rho_u, pool_relevance=relevance)
    out = default_data_dir("fashion_mnist", spec)
    if not os.path.exists(os.path.join(out, MANIFEST)):
        prepare_from_source("fashion_mnist", spec, out)
    return out


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


def pseudo_label(model_uri: str, data: str, work: str) -> dict:
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
    Executor(Executor.Context(beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=f"{work}/tmp")).Do(
        inputs, {"pseudo_labeled_examples": [out], "statistics": [stats]}, {"num_classes": 10})
    return json.load(open(os.path.join(stats.uri, PSEUDO_LABEL_STATS_FILE)))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="smoke-testing the script only")
    a = p.parse_args()
    data = {pool: prepared(*pool) for pool in POOLS}
    manifest = json.load(open(os.path.join(data[POOLS[0]], MANIFEST)))
    labeled_counts = manifest["splits"]["labeled"]["per_class_counts"]
    stats = derive_label_stats(labeled_counts, manifest["class_names"])
    shape = manifest["image_shape"]
    files = [os.path.join(data[POOLS[0]], f) for f in manifest["splits"]["labeled"]["files"]]
    cfg = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, max_steps_per_epoch=a.max_steps_per_epoch)
    os.makedirs("runs", exist_ok=True)
    work = tempfile.mkdtemp(prefix="pool-bench-", dir="runs")
    try:
        # the trained base model is kept (runs/ is ignored) so a rerun of the estimates skips training
        model_dir = f"runs/pool-bench-model-e{a.epochs}-s{a.max_steps_per_epoch}"
        train_seconds = None
        if not os.path.exists(f"{model_dir}/Format-Serving/saved_model.pb"):
            from models.export import export_serving_model

            t0 = time.time()
            model, _ = train(cfg, files, stats, shape, f"{work}/train")
            train_seconds = time.time() - t0
            export_serving_model(model, f"{model_dir}/Format-Serving", shape)
            json.dump({"train_seconds": train_seconds}, open(f"{model_dir}/train.json", "w"))
        train_seconds = json.load(open(f"{model_dir}/train.json"))["train_seconds"]
        rows = []
        for pool in POOLS:
            truth = json.load(open(os.path.join(data[pool], MANIFEST)))
            pool_entry, comp = truth["splits"]["unlabeled"], truth["unlabeled_composition"]
            hidden = np.asarray(pool_entry["hidden_per_class_counts_from_train"], np.float64)
            true_q = hidden / hidden.sum()
            t0 = time.time()
            s = pseudo_label(model_dir, data[pool], f"{work}/pl-{pool[0]:g}-{pool[1]:g}")
            decision = plan(sum(labeled_counts), labeled_counts,
                            PoolEstimates(s["num_pool_examples"], s["estimated_relevance"], s["estimated_rho_u"]))
            rows.append({
                "pool": f"rho_U={pool[0]:g}, relevance={pool[1]:g}", "size": pool_entry["num_examples"],
                "true_rho_u": imbalance_ratio(true_q), "raw_rho_u": s["raw_rho_u"], "bbse_rho_u": s["estimated_rho_u"],
                "raw_l1": float(np.abs(np.asarray(s["raw_class_distribution"]) - true_q).sum()),
                "bbse_l1": float(np.abs(np.asarray(s["estimated_class_distribution"]) - true_q).sum()),
                "method": s["class_distribution_method"].split(" ")[0], "cond": s["bbse_soft_condition_number"],
                "cond_hard": s["bbse_condition_number"], "true_rel": comp["relevance"],
                "msp_fixed": s["relevance"]["max_softmax"]["at_tpr"]["relevance"],
                "energy_fixed": s["relevance"]["energy"]["at_tpr"]["relevance"],
                "msp_best": s["relevance"]["max_softmax"]["relevance"], "energy_best": s["relevance"]["energy"]["relevance"],
                "choice": decision["choice"], "seconds": time.time() - t0})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    lines = ["| pool | size | true rho_U | raw rho_U | corrected rho_U | L1 raw | L1 corrected | method | "
             "true relevance | max-softmax @TPR 0.95 | energy @TPR 0.95 | max-softmax best bin | energy best bin | "
             "planner | PseudoLabeler s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pool']} | {r['size']} | {f(r['true_rho_u'], 1)} | {f(r['raw_rho_u'], 1)} | "
                     f"{f(r['bbse_rho_u'], 1)} | {f(r['raw_l1'], 3)} | {f(r['bbse_l1'], 3)} | {r['method']} | "
                     f"{f(r['true_rel'])} | {f(r['msp_fixed'])} | {f(r['energy_fixed'])} | {f(r['msp_best'])} | "
                     f"{f(r['energy_best'])} | {r['choice']} | {r['seconds']:.0f} |")
    cond, cond_hard = rows[0]["cond"], rows[0]["cond_hard"]
    write_result("bench/results/pool_estimates.md", "Pool estimates against the truth, Fashion-MNIST-LT rho=100",
                 f"Base model: CE, resnet8, {a.epochs} epochs ({train_seconds:.0f} s), on the labeled split "
                 f"({sum(labeled_counts)} images, {labeled_counts}); validation 300 a class. Condition number of the "
                 f"validation confusion matrix: soft {f(cond)}, hard {f(cond_hard) if cond_hard else 'inf (singular)'}. "
                 "Truth from the manifest: rho_U and the class distribution of the in-domain pool images, relevance "
                 "= in-domain share. L1 = sum |q_est - q_true| over the 10 classes (raw = pseudo-label counts, "
                 "corrected = the method column: bbse_soft / bbse / raw). Relevance @TPR 0.95: threshold at the "
                 "validation scores' 5th percentile, FPR assumed 0; best bin: the smallest pool/validation ratio of "
                 "the fractions above thresholds at TPR 0.95, 0.8, 0.6, 0.4, 0.2, 0.1 (the headline estimate, "
                 "energy's). Planner (on the headline estimates) with its "
                 f"default thresholds {PlannerConfig().thresholds()}.",
                 "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
