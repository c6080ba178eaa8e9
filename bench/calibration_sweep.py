"""The calibration's settings (issue #28), refitted on finished runs: no retraining.

For each finished `bench/default_run.py` run (its runs root), this loads the run's final Keras model (the Trainer's
model_run/model.keras, logits out, no offsets), scores the validation split's two halves (models/calibration.py's
FarmHash64 buckets: the fit half and the gate's half) and the test split once, then refits the per-class offsets
(models.calibration.fit_offsets) on the fit half for every setting asked for, and scores each on the gate half and on
test. The run's own setting is among them, so its row is a control: it must give the run's own test balanced accuracy.
`--flip-tta` also scores the mean of the logits of the image and its mirror image (test-time flip), with each setting.

  tools/env exec python bench/calibration_sweep.py --runs runs/default-run/default-s0-... [...] \\
      [--weights 0,0.25,0.5,1,2] [--max-offsets 0.5,1,2] [--flip-tta]

Rows go to bench/results/calibration_sweep.jsonl, the table (means over the runs) to bench/results/calibration_sweep.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import append_rows, prepared, write_result  # noqa: E402

JSONL = os.path.join(ROOT, "bench", "results", "calibration_sweep.jsonl")


def one(pattern: str) -> str:
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"error: {len(found)} paths match {pattern} (expected 1): {found}")
    return found[0]


def scored(model, files, image_shape, flip: bool):
    """(logits, labels, hash buckets) of a labeled split's TFRecords, decoded as the SavedModel decodes them; with
    ``flip`` the logits are the mean over the image and its mirror image."""
    import numpy as np

    from models import calibration, inputs
    from models.export import model_logits

    ds = calibration.bucketed_records(files).map(
        lambda image, label, bucket: (inputs.to_float(inputs.decode_image(image, image_shape)), label, bucket))
    logits, labels, buckets = [], [], []
    for x, y, b in ds.batch(512):
        logits.append(model_logits(model, x, flip).numpy())  # what the SavedModel serves (train.test_time_flip)
        labels.append(y.numpy())
        buckets.append(b.numpy())
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(buckets)


def sweep(runs_root: str, weights: list[float], max_offsets: list[float], flips: list[bool]) -> list[dict]:
    import keras
    import numpy as np

    import models.backbones  # noqa: F401  (registers the custom layers model.keras names)
    from models import calibration

    metrics = json.load(open(one(os.path.join(runs_root, "*", "metrics.json"))))
    data_dir = os.path.join(ROOT, metrics["data"]["data_dir"])
    manifest, stats, files = prepared(data_dir)
    image_shape = manifest["image_shape"]
    num_classes = int(manifest["num_classes"])
    model_path = one(os.path.join(runs_root, "_tfx", "*", "root", "LongTailTrainer", "model_run", "*", "model.keras"))
    model = keras.models.load_model(model_path, compile=False)
    own = metrics["calibration"].get("settings") or {}
    rows = []
    for flip in flips:
        val_logits, val_labels, val_buckets = scored(model, files["validation"], image_shape, flip)
        test_logits, test_labels, _ = scored(model, files["test"], image_shape, flip)
        fit = val_buckets == calibration.FIT_BUCKET
        settings = [(w, m) for w in weights for m in max_offsets] + [(None, None)]
        for w, m in settings:
            if w is None:
                offsets = np.zeros(num_classes)
            else:
                offsets = np.asarray(calibration.fit_offsets(val_logits[fit], val_labels[fit], num_classes, w, m,
                                                             own.get("step", 0.05))["offsets"])
            gate = calibration.recalls(val_logits[~fit], val_labels[~fit], num_classes, offsets)
            test = calibration.recalls(test_logits, test_labels, num_classes, offsets)
            worst = int(np.nanargmin(test))
            rows.append({"run": os.path.relpath(runs_root, ROOT), "seed": metrics["seed"], "flip_tta": flip,
                         "worst_class_weight": w, "max_offset": m,
                         "own_setting": w == own.get("worst_class_weight") and m == own.get("max_offset"),
                         "run_test_balanced_accuracy": metrics["test"]["balanced_accuracy"],
                         "gate_balanced_accuracy": float(np.nanmean(gate)), "gate_worst_recall": float(np.nanmin(gate)),
                         "test_balanced_accuracy": float(np.nanmean(test)), "test_worst_recall": float(test[worst]),
                         "test_worst_class": stats["class_names"][worst], "test_per_class_recall": test.tolist(),
                         "offsets": offsets.tolist()})
            r = rows[-1]
            print(f"[sweep] seed {r['seed']} flip {flip} w {w} max {m}: test {r['test_balanced_accuracy']:.4f} worst "
                  f"{r['test_worst_class']} {r['test_worst_recall']:.3f}; gate {r['gate_balanced_accuracy']:.4f} / "
                  f"{r['gate_worst_recall']:.3f}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["flip_tta"], r["worst_class_weight"], r["max_offset"]), []).append(r)
    lines = ["| test-time flip | worst_class_weight | max_offset | seeds | test balanced acc (per seed) | mean | "
             "test worst recall (per seed) | every class > 0.70 | gate half: balanced / worst (mean) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (flip, w, m), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0,
                                                                      kv[0][2] or 0)):
        group.sort(key=lambda r: r["seed"])
        ba = [r["test_balanced_accuracy"] for r in group]
        worst = [r["test_worst_recall"] for r in group]
        lines.append(f"| {'yes' if flip else 'no'} | {'(no offsets)' if w is None else w} | {'' if m is None else m} | "
                     f"{','.join(str(r['seed']) for r in group)} | {' / '.join(f'{v:.4f}' for v in ba)} | "
                     f"{statistics.mean(ba):.4f} | {' / '.join(f'{v:.3f}' for v in worst)} | "
                     f"{sum(v > 0.70 for v in worst)} of {len(worst)} | "
                     f"{statistics.mean(r['gate_balanced_accuracy'] for r in group):.4f} / "
                     f"{statistics.mean(r['gate_worst_recall'] for r in group):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="runs roots of finished bench/default_run.py runs")
    ap.add_argument("--weights", default="0,0.25,0.5,1,2", help="worst_class_weight values (comma list)")
    ap.add_argument("--max-offsets", default="1", help="max_offset values (comma list)")
    ap.add_argument("--flip-tta", action="store_true", help="also score with test-time flip")
    ap.add_argument("--jsonl", default=JSONL, help="where the rows go (the table is rendered from it)")
    a = ap.parse_args()
    weights = [float(v) for v in a.weights.split(",")]
    max_offsets = [float(v) for v in a.max_offsets.split(",")]
    for runs_root in a.runs:
        rows = append_rows(a.jsonl, sweep(runs_root, weights, max_offsets, [False, True] if a.flip_tta else [False]))
    description = ("Each run's final model (no retraining), its per-class offsets refitted on the validation split's "
                   "fit half (models.calibration.fit_offsets, grid step 0.05) for each setting, scored on the other "
                   "half (the gate's) and on the 10,000-image test split. Fashion-MNIST-LT rho=100, the default "
                   "preset's runs (bench/results/default_run.jsonl). The default is worst_class_weight 1, max_offset "
                   "0.5 (1 before fb3bbc7).")
    write_result(os.path.splitext(a.jsonl)[0] + ".md", "Calibration settings refitted on finished runs",
                 description, table(rows))


if __name__ == "__main__":
    main()
