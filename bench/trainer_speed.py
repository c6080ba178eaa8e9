"""Trainer throughput alone (no pipeline): models.training.train on the prepared TFRecords of PNG bytes.

Run inside the environment: tools/env exec python bench/trainer_speed.py --epochs 4 [--set key=value ...]
(keys: models.config.TrainConfig fields, optionally as train.<field>)
Prints one JSON line: images/s and s/epoch, counting every epoch (the first one decodes the PNGs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.data.prepare import load_manifest  # noqa: E402
from models import config, dotted, precision, training  # noqa: E402
from models.label_stats import derive_label_stats  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default=None, help="prepared data (default: the default preset's data, prepared if missing)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    data = a.data_dir or ensure_data(load_config("default"))
    manifest = load_manifest(data)
    counts = manifest["splits"]["labeled"]["per_class_counts"]
    stats = derive_label_stats(counts, manifest["class_names"])
    fields = dotted.leaf_paths(config.TrainConfig)
    settings = {"epochs": a.epochs}
    for o in a.overrides:
        k, v = o.split("=", 1)
        k = k.removeprefix("train.")
        if k not in fields:
            p.error(f"--set {o}: TrainConfig has no field {k!r}; choose one of {sorted(fields)}")
        settings[k] = dotted.parse_value(v, fields[k])
    cfg = dotted.from_dict(config.TrainConfig, settings, "train.")
    files = [os.path.join(data, f) for f in manifest["splits"]["labeled"]["files"]]
    precision.set_mixed_precision(cfg.mixed_precision)  # as the Trainer's run_fn does
    t0 = time.time()
    with tempfile.TemporaryDirectory() as run_dir:
        _, history = training.train(cfg, files, stats, manifest["image_shape"], run_dir)
    seconds = time.time() - t0
    n = sum(counts)
    print(json.dumps({"runner": "longtail-tfx trainer (TFRecords of PNG)", "images": n, "epochs": cfg.epochs,
                      "train_s": seconds, "s_per_epoch": seconds / cfg.epochs, "images_per_s": n * cfg.epochs / seconds,
                      "epoch_seconds": [round(h["seconds"], 2) for h in history], "config": vars(a)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
