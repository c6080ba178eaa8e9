"""The pool's upper bound (issue #28): the default preset's final model trained on the pool's true labels.

For a finished `bench/default_run.py` run (its runs root), this retrains that run's final Trainer twice, from the same
base model (the BaseTrainer's `init_model`), with the same job (pipeline.pipeline.training_job of the run's preset,
seed and settings) and the same schedule:
  - "pseudo-labels": on the run's own PseudoLabeler output (a control: it should reproduce the run's own final model,
    scored without its calibration offsets);
  - "true labels": the same 7,000 pool images, each labelled with its true class from the prepared folder's
    evaluation-only file (`unlabeled_true_labels.json`, which nothing in training reads), the PseudoLabeler's
    statistics recounted from them (so the final loss's class prior is the true one).
The difference bounds what any better pseudo-labelling can add at this schedule. Both models are scored on the test
split without calibration offsets (the run's "without calibration" column), so the offsets' effect is not mixed in.

  tools/env exec python bench/pool_truth_bound.py --runs runs/default-run/default-s0-... [--no-control]

Rows go to bench/results/pool_truth_bound.jsonl, the table to bench/results/pool_truth_bound.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import append_rows, evaluate, prepared, read_rows, run_fn_args, write_result  # noqa: E402

JSONL = os.path.join(ROOT, "bench", "results", "pool_truth_bound.jsonl")
RUNS_JSONL = os.path.join(ROOT, "bench", "results", "default_run.jsonl")


def one(pattern: str) -> str:
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"error: {len(found)} paths match {pattern} (expected 1): {found}")
    return found[0]


def run_row(runs_root: str) -> dict:
    """The default_run.jsonl row of this runs root: its label, seed and settings."""
    rel = os.path.relpath(os.path.abspath(runs_root), ROOT)
    rows = read_rows(RUNS_JSONL)
    found = [r for r in rows if r["out"].startswith(rel + os.sep)]
    if len(found) != 1:
        raise SystemExit(f"error: {len(found)} rows of {RUNS_JSONL} have their output under {rel} (expected 1)")
    return found[0]


def pool_truth(data_dir: str, manifest: dict) -> tuple[list[bytes], list[int]]:
    """(the pool's encoded images in record order, their true classes) from the prepared folder's evaluation-only
    file (models.semi.load_pool_truth reads the same file, but decodes the images to floats)."""
    import tensorflow as tf

    entry = manifest["splits"]["unlabeled"]
    with open(os.path.join(data_dir, entry["true_labels_file"])) as f:
        truth = json.load(f)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    images = [tf.io.parse_single_example(r, spec)["image"].numpy()
              for r in tf.data.TFRecordDataset([os.path.join(data_dir, p) for p in truth["files"]])]
    if len(images) != len(truth["labels"]):
        raise SystemExit(f"error: {entry['true_labels_file']}: {len(truth['labels'])} true labels for {len(images)} "
                         "pool records")
    return images, [int(label) for label in truth["labels"]]


def true_labeled_pool(images: list[bytes], labels: list[int], out_dir: str, num_classes: int) -> tuple[str, list[int]]:
    """The pool's records with their true classes, as the PseudoLabeler writes its examples (components/pseudo_labeler
    .to_example: image, label, confidence 1, origin): (file, per-class counts)."""
    import numpy as np
    import tensorflow as tf

    from components.pseudo_labeler import to_example

    os.makedirs(out_dir)
    path = os.path.join(out_dir, "pool_true_labels.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for image, label in zip(images, labels):
            w.write(to_example({"image": image, "label": label, "confidence": 1.0}))
    return path, np.bincount(labels, minlength=num_classes).tolist()


def pseudo_label_accuracy(pseudo_files: list[str], images: list[bytes], labels: list[int]) -> float | None:
    """The share of the run's pseudo-labels that are right: each pseudo-labeled image matched to its pool record by
    its encoded bytes (the PseudoLabeler writes them unchanged, in no fixed order)."""
    import tensorflow as tf

    by_image = {}
    for image, label in zip(images, labels):
        by_image.setdefault(image, set()).add(label)
    right = total = 0
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    for record in tf.data.TFRecordDataset(pseudo_files, compression_type="GZIP"):
        ex = tf.io.parse_single_example(record, spec)
        total += 1
        right += int(ex["label"].numpy()) in by_image.get(ex["image"].numpy(), set())
    return right / total if total else None


def train_final(cfg, manifest, data_dir, files, scratch, inputs: dict, stats) -> tuple[dict, float, dict]:
    """The final Trainer's run_fn with the run's job and these inputs: (test scores without offsets, seconds,
    training summary)."""
    import keras

    from models import trainer
    from pipeline import pipeline as jobs

    root = tempfile.mkdtemp(prefix="final-", dir=scratch)
    job = jobs.training_job(cfg, manifest, root, data_dir).with_inputs(**inputs)
    fn_args = run_fn_args(root, files["labeled"], files["validation"], job.to_custom_config())
    t0 = time.time()
    trainer.run_fn(fn_args)
    seconds = time.time() - t0
    with open(os.path.join(fn_args.model_run_dir, trainer.SUMMARY_FILE)) as f:
        summary = json.load(f)
    model = keras.models.load_model(os.path.join(fn_args.model_run_dir, "model.keras"), compile=False)
    return evaluate(model, files["test"], manifest["image_shape"], stats), seconds, summary


def bound(runs_root: str, control: bool, extra: list[str]) -> list[dict]:
    from pipeline.configs import load_config

    row = run_row(runs_root)
    with open(os.path.join(ROOT, row["out"], "metrics.json")) as f:
        metrics = json.load(f)
    trained_with = (metrics.get("plan") or {}).get("trained_with")
    if trained_with != "pseudo_label":
        raise SystemExit(f"error: {row['out']}: its final model did not train on pseudo-labels (plan: {trained_with})")
    data_dir = os.path.join(ROOT, metrics["data"]["data_dir"])  # an absolute data_dir is kept as it is
    manifest, _, files = prepared(data_dir)
    pipeline_root = one(os.path.join(runs_root, "_tfx", "*", "root"))
    label_stats_path = one(os.path.join(pipeline_root, "LabelStatsGen", "label_stats", "*", "label_stats.json"))
    with open(label_stats_path) as f:
        stats = json.load(f)
    pseudo_files = sorted(glob.glob(os.path.join(pipeline_root, "PseudoLabeler", "pseudo_labeled_examples", "*",
                                                 "Split-train", "*")))
    pl_stats_path = one(os.path.join(pipeline_root, "PseudoLabeler", "statistics", "*", "pseudo_label_stats.json"))
    init_model = one(os.path.join(pipeline_root, "BaseTrainer", "model", "*", "Format-Serving"))
    overrides = {"train.seed": str(row["seed"])}
    overrides.update(dict(s.split("=", 1) for s in [*row["settings"], *extra]))
    cfg = load_config("default", overrides)
    scratch = tempfile.mkdtemp(prefix="pool-truth-", dir=os.path.join(ROOT, "runs"))
    common = {"label_stats_path": label_stats_path, "init_model": init_model}

    images, labels = pool_truth(data_dir, manifest)
    truth_file, truth_counts = true_labeled_pool(images, labels, os.path.join(scratch, "pool"),
                                                 int(manifest["num_classes"]))
    with open(pl_stats_path) as f:
        pl_stats = json.load(f)
    truth_stats = dict(pl_stats, per_class_predicted=truth_counts, per_class_accepted=truth_counts,
                       num_accepted=sum(truth_counts), note="true labels (bench/pool_truth_bound.py)")
    truth_stats_path = os.path.join(scratch, "pool", "pseudo_label_stats.json")
    with open(truth_stats_path, "w") as f:
        json.dump(truth_stats, f)
    accuracy = pseudo_label_accuracy(pseudo_files, images, labels)
    print(f"[bound] {row['label']} seed {row['seed']}: the run's pseudo-labels are {accuracy:.4f} right "
          f"({pl_stats['num_accepted']} of {pl_stats['num_pool_examples']} accepted)", file=sys.stderr, flush=True)

    base = {"label": row["label"], "settings": row["settings"], "extra_settings": extra, "seed": row["seed"], "run": row["out"],
            "run_uncalibrated_balanced_accuracy": row["uncalibrated_balanced_accuracy"],
            "run_uncalibrated_worst_class_recall": row["uncalibrated_worst_class_recall"],
            "pseudo_label_accuracy": accuracy, "class_names": stats["class_names"]}
    kinds = [("true labels", {"pseudo_labeled_files": [truth_file], "pseudo_label_stats_path": truth_stats_path})]
    if control:
        kinds.insert(0, ("pseudo-labels", {"pseudo_labeled_files": pseudo_files,
                                           "pseudo_label_stats_path": pl_stats_path}))
    rows = []
    for kind, inputs in kinds:
        print(f"[bound] final model on the pool's {kind}", file=sys.stderr, flush=True)
        scores, seconds, summary = train_final(cfg, manifest, data_dir, files, scratch, {**common, **inputs}, stats)
        recall = scores["per_class_recall"]
        worst = min(range(len(recall)), key=recall.__getitem__)
        rows.append({**base, "pool_labels": kind, "balanced_accuracy": scores["balanced_accuracy"],
                     "per_class_recall": recall, "worst_class": stats["class_names"][worst],
                     "worst_class_recall": recall[worst], "train_s": seconds, "epochs": summary.get("epochs"),
                     "training_class_counts": summary.get("training_class_counts")})
        print(f"[bound] {kind}: test balanced accuracy {scores['balanced_accuracy']:.4f} (no offsets), worst "
              f"{stats['class_names'][worst]} {recall[worst]:.3f}, {seconds:.0f} s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| run label | seed | pool labels | the run's pseudo-label accuracy | test balanced acc (no offsets) | "
             "the run's own final model (no offsets) | worst class (recall) | final training s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['seed']} | {r['pool_labels']} | {r['pseudo_label_accuracy']:.4f} | "
                     f"{r['balanced_accuracy']:.4f} | {r['run_uncalibrated_balanced_accuracy']:.4f} | "
                     f"{r['worst_class']} ({r['worst_class_recall']:.3f}) | {r['train_s']:.0f} |")
    truth = [r for r in rows if r["pool_labels"] == "true labels"]
    if truth:
        gains = [r["balanced_accuracy"] - r["run_uncalibrated_balanced_accuracy"] for r in truth]
        spread = f", sd {statistics.stdev(gains):.4f}" if len(gains) > 1 else ""
        lines += ["", f"True labels against the run's own final model (both without offsets), over {len(gains)} "
                  f"seed(s): mean {statistics.mean(gains):+.4f}{spread} "
                  f"({', '.join(f'{g:+.4f}' for g in gains)})."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="runs roots of finished bench/default_run.py runs")
    ap.add_argument("--no-control", action="store_true", help="skip the retraining on the run's own pseudo-labels")
    ap.add_argument("--set", action="append", default=[], metavar="K=V",
                    help="a setting on top of the run's (a shorter schedule to try the script; recorded in the row)")
    ap.add_argument("--jsonl", default=JSONL, help="where the rows go (the table is rendered from it)")
    a = ap.parse_args()
    rows = append_rows(a.jsonl, [])
    for runs_root in a.runs:
        for r in bound(runs_root, control=not a.no_control, extra=a.set):
            rows = append_rows(a.jsonl, [r])
    description = ("The default preset's final Trainer retrained from its run's own base model, once on the run's "
                   "pseudo-labels (control) and once on the pool's true labels (the same 7,000 images), the same "
                   "job, seed and schedule (its final_epochs); scored on the 10,000-image test split without calibration "
                   "offsets. Fashion-MNIST-LT rho=100, a balanced pool (rho_u ~1).")
    write_result(os.path.splitext(a.jsonl)[0] + ".md", "The pool's upper bound: the final model on true labels",
                 description, table(rows))


if __name__ == "__main__":
    main()
