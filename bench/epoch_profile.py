"""Where one default training epoch's time goes (issue #43): the input pipeline, the forward pass, the backward
pass, the optimizer update, Keras's fit loop and the callbacks, each timed alone on the default preset's data.

Run inside the environment:
  tools/env exec python bench/epoch_profile.py [--epochs 3] [--set train.jit_compile=true ...] [--label L]
Prints one JSON line (seconds for one epoch's worth of each part; the median over --epochs repeats), appends it to
bench/results/epoch_profile.jsonl and renders bench/results/epoch_profile.md from every row there (--render: only
that). Each part, for one epoch of the labeled set (the default preset's batch, backbone and augmentation):
  input          iterate the Trainer's own dataset (models.toolkit.labeled_dataset) alone, its cache warm
  forward        model(x, training=True) and the loss, on the same batches held in memory
  forward+grad   the same and the gradients (tape.gradient), no update
  train step     the same and the optimizer's update (the Trainer's SGD, decoupled weight decay)
  fit, memory    keras fit over the in-memory batches: train step + Keras's loop and its metric, no callbacks
  + progress, + TensorBoard, + checkpoints: the same with the Trainer's callbacks added one by one
  fit, callbacks the same with all of them: progress, TensorBoard, per-epoch weights, BackupAndRestore (the pipeline's)
  fit, real      the Trainer's real epoch: its dataset, its callbacks (what the pipeline pays)
The parts overlap in the real fit (tf.data prefetches while the step runs), but on 2 cores they share the CPU, so
input + fit, callbacks is close to the real epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
JSONL = os.path.join(ROOT, "bench", "results", "epoch_profile.jsonl")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.common import append_rows, prepared, read_rows, write_result  # noqa: E402
from models import losses, precision, toolkit  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data, with_backbone  # noqa: E402


def timed(fn, repeats: int) -> float:
    """The median wall seconds of ``fn()`` over ``repeats`` calls, after one untimed call (tracing, the cache)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3, help="timed repeats of each part (after one untimed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, as pipeline run takes")
    p.add_argument("--label", default="default")
    p.add_argument("--render", action="store_true", help="only render the table from the recorded rows")
    a = p.parse_args()
    if a.render:
        render(read_rows(JSONL))
        return 0
    overrides = dict(o.split("=", 1) for o in a.overrides)
    cfg_all = load_config("default", overrides)  # the default preset as `make run` trains it, with the --set levers
    manifest, stats, split_files = prepared(ensure_data(cfg_all))
    image_shape = manifest["image_shape"]
    cfg = with_backbone(cfg_all, manifest).train
    precision.set_mixed_precision(cfg.mixed_precision)
    files = split_files["labeled"]
    keras.utils.set_random_seed(cfg.seed)
    ds, steps = toolkit.labeled_dataset(cfg, files, stats, image_shape, cfg.sampler, cfg.epochs)
    it = iter(ds)

    def input_epoch():
        for _ in range(steps):
            next(it)

    parts = {"input": timed(input_epoch, a.epochs)}
    batches = [next(it) for _ in range(steps)]  # one epoch of augmented batches, held in memory
    model = toolkit.build_model(cfg, image_shape, stats["num_classes"])
    loss_fn = losses.make_loss(cfg, stats, None)
    optimizer = toolkit.sgd_for(cfg, cfg.epochs * steps)
    variables = model.trainable_variables

    @tf.function(jit_compile=cfg.jit_compile)
    def forward(x, y):
        return loss_fn(y, model(x, training=True))

    @tf.function(jit_compile=cfg.jit_compile)
    def forward_grad(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, variables)
        return loss + tf.add_n([tf.reduce_sum(tf.cast(g, "float32")) for g in grads]) * 0.0

    @tf.function(jit_compile=cfg.jit_compile)
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def over_batches(fn):
        def epoch():
            for x, y in batches:
                out = fn(x, y)
            float(out)  # wait for the last step
        return epoch

    if keras.backend.backend() == "tensorflow":  # the step's parts as tf.functions; on JAX, Keras's fit alone
        parts["forward"] = timed(over_batches(forward), a.epochs)
        parts["forward+grad"] = timed(over_batches(forward_grad), a.epochs)
        parts["train step"] = timed(over_batches(train_step), a.epochs)
    memory = tf.data.Dataset.from_tensor_slices(
        (tf.concat([x for x, _ in batches], 0), tf.concat([y for _, y in batches], 0))).batch(cfg.batch_size).cache()
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "runs")) as run_dir:  # the checkout: rootfs mode's /tmp
        fit_model = toolkit.build_model(cfg, image_shape, stats["num_classes"])
        fit_model.compile(toolkit.sgd_for(cfg, cfg.epochs * steps), losses.make_loss(cfg, stats, None),
                          metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                          jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)
        progress = toolkit.EpochProgress(cfg.epochs, prefix="[profile]")
        trainer = toolkit.standard_callbacks(progress, run_dir, os.path.join(run_dir, "backup"), checkpoints=True)
        k = 3  # epochs a fit call: the callbacks' on_train_begin (TensorBoard's graph) is paid once a call, as in a run

        def fit_epoch(data, callbacks):
            return lambda: fit_model.fit(data, epochs=k, steps_per_epoch=steps, verbose=0, callbacks=callbacks)

        parts["fit, memory"] = timed(fit_epoch(memory.repeat(), []), a.epochs) / k
        for name, callbacks in [("+ progress", trainer[:1]), ("+ TensorBoard", trainer[:2]),
                                ("+ checkpoints", trainer[:3]), ("fit, callbacks", trainer)]:
            parts[name] = timed(fit_epoch(memory.repeat(), callbacks), a.epochs) / k
        parts["fit, real"] = timed(fit_epoch(ds, trainer), a.epochs) / k
    row = {"label": a.label, "settings": a.overrides, "backbone": cfg.backbone, "augment": cfg.augment,
           "batch_size": cfg.batch_size, "steps": steps, "images": stats["num_examples"], "repeats": a.epochs,
           "seconds": {k: round(v, 3) for k, v in parts.items()},
           "keras_backend": keras.backend.backend(), "tf": tf.__version__, "keras": keras.__version__,
           "date": time.strftime("%Y-%m-%d"), "machine": f"{os.uname().nodename}, {os.cpu_count()} CPUs"}
    print(json.dumps(row))
    render(append_rows(JSONL, [row]))
    return 0


PARTS = ["input", "forward", "forward+grad", "train step", "fit, memory", "+ progress", "+ TensorBoard", "+ checkpoints",
         "fit, callbacks", "fit, real"]


def render(rows: list[dict]) -> None:
    head = "| label | settings | backend | backbone | augment | " + " | ".join(PARTS) + " | images/s (fit, real) | date |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r["seconds"]
        cells = [f"{s[k]:.2f}" if k in s else "-" for k in PARTS]
        lines.append(f"| {r['label']} | {' '.join(r['settings']) or '(preset)'} | {r['keras_backend']} | {r['backbone']} | "
                     f"{r['augment']} | " + " | ".join(cells) + f" | {r['images'] / s['fit, real']:.0f} | {r['date']} |")
    write_result(os.path.join(ROOT, "bench", "results", "epoch_profile.md"), "One default training epoch, part by part",
                 __doc__.split("\n\n", 1)[1].strip() + "\n\nSeconds for one epoch of the labeled set (12,406 images, "
                 "batch 128), the median of the repeats.", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
