"""How long Keras's fit takes to return after its last epoch, with tf.data's autotuning model on and off.

    tools/env exec python bench/fit_teardown.py [--runs 5] [--epochs 3]

Each run is a fresh process that trains the default preset's model on the prepared labeled split as
bench/trainer_speed.py does (models.training.train), with models.inputs.untuned as committed (autotune off) or
replaced by the identity (autotune on, tf.data's default), alternating. It records the time from the last epoch's end
to fit's return: the iterator's deletion, which waits for the autotuning thread to wake from its back-off sleep.
The table goes to bench/results/fit_teardown.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import write_result  # noqa: E402


def child(epochs: int, autotune: bool) -> dict:
    import keras

    from components.data.prepare import load_manifest
    from models import config, distribute, inputs, training
    from models.label_stats import derive_label_stats
    from pipeline.configs import load_config
    from pipeline.tasks import ensure_data

    if autotune:
        inputs.untuned = lambda ds: ds  # tf.data's default; read_examples looks it up at call time
    data = ensure_data(load_config("default"))
    manifest = load_manifest(data)
    counts = manifest["splits"]["labeled"]["per_class_counts"]
    stats = derive_label_stats(counts, manifest["class_names"])
    cfg = config.from_dict(config.TrainConfig, {"epochs": epochs}, "train.")
    files = [os.path.join(data, f) for f in manifest["splits"]["labeled"]["files"]]
    marks = {}

    class LastEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            marks["last_epoch_end"] = time.time()

    fit = keras.Model.fit

    def timed_fit(self, *a, **k):
        marks["fit_start"] = time.time()
        out = fit(self, *a, **k)
        marks["fit_return"] = time.time()
        return out

    keras.Model.fit = timed_fit
    distribute.set_mixed_precision(cfg.mixed_precision)
    with tempfile.TemporaryDirectory() as run_dir:
        training.train(cfg, files, stats, manifest["image_shape"], run_dir, extra_callbacks=[LastEpoch()])
    return {"autotune": autotune, "epochs": epochs, "fit_s": marks["fit_return"] - marks["fit_start"],
            "epochs_s": marks["last_epoch_end"] - marks["fit_start"],
            "teardown_s": marks["fit_return"] - marks["last_epoch_end"]}


def table(rows: list[dict]) -> str:
    lines = ["| autotune | runs | teardown s (each run) | runs with teardown > 1 s | fit s mean | epochs s mean |",
             "|---|---|---|---|---|---|"]
    for on in (True, False):
        rs = [r for r in rows if r["autotune"] == on]
        if rs:
            lines.append(f"| {'on (tf.data default)' if on else 'off (models.inputs.untuned)'} | {len(rs)} | "
                         + " / ".join(f"{r['teardown_s']:.1f}" for r in rs)
                         + f" | {sum(r['teardown_s'] > 1 for r in rs)} of {len(rs)} | "
                         f"{statistics.mean(r['fit_s'] for r in rs):.1f} | {statistics.mean(r['epochs_s'] for r in rs):.1f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5, help="runs of each setting")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.epochs, a.child == "on")))
        return 0
    rows = []
    for i in range(a.runs):
        for setting in ("on", "off"):
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", setting, "--epochs",
                                   str(a.epochs)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"run {i} (autotune {setting}) failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    write_result(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fit_teardown.md"),
                 "fit's return after its last epoch, tf.data autotuning on and off",
                 f"The default preset's model on the prepared Fashion-MNIST-LT labeled split (12,406 images), "
                 f"{a.epochs} epochs a run, each run a fresh process, the settings alternating. \"teardown\" is the time "
                 f"from the last epoch's end to fit's return (the tf.data iterator's deletion); the process is idle "
                 f"through it (top: 0% CPU), the main thread in RootDataset::Iterator::~Iterator waiting for its "
                 f"thread pool (py-spy dump --native).", table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
