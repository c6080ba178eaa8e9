"""Speed levers of the Trainer (issue #43), paired in one process: each variant's model trains on the default
preset's real input (models.toolkit.labeled_dataset, its own copy) with the Trainer's callbacks, and the variants take
turns, a fit call of --chunk epochs each, for --rounds rounds. This machine's speed drifts by 2x between days and by
tens of percent within minutes (other tenants), so only a ratio measured turn by turn means anything.

  tools/env exec python bench/lever_ab.py --variant "default:" --variant "xla:train.jit_compile=true" \\
      --variant "bf16:train.mixed_precision=mixed_bfloat16" [--rounds 4] [--chunk 2] [--label L]

A variant is NAME:KEY=VALUE,KEY=VALUE (pipeline run's keys; the first variant is the baseline). Prints a JSON line
a variant and appends them to bench/results/lever_ab.jsonl; bench/results/lever_ab.md renders every recorded row.
Speed only: a lever that changes the numerics (bf16, XLA's fusion) is judged on accuracy by bench/default_run.py.
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
JSONL = os.path.join(ROOT, "bench", "results", "lever_ab.jsonl")

import keras  # noqa: E402

from bench.common import append_rows, prepared, read_rows, write_result  # noqa: E402
from models import losses, precision, toolkit  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data, with_backbone  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    return name, dict(kv.split("=", 1) for kv in settings.split(",") if kv)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--variant", action="append", default=[])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--chunk", type=int, default=2, help="epochs a turn (one fit call)")
    p.add_argument("--label", default="")
    p.add_argument("--render", action="store_true")
    a = p.parse_args()
    if a.render:
        render(read_rows(JSONL))
        return 0
    variants = [parse_variant(v) for v in a.variant] or [("default", {})]
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "runs"), prefix="lever-ab-") as work:  # rootfs mode's /tmp
        rows = measure(a, variants, work)  # is not the host's: the checkout's runs/
    render(append_rows(JSONL, rows))
    return 0


def measure(a: argparse.Namespace, variants: list[tuple[str, dict]], work: str) -> list[dict]:
    built = []
    for name, overrides in variants:
        cfg_all = load_config("default", overrides)
        manifest, stats, split_files = prepared(ensure_data(cfg_all))
        image_shape = manifest["image_shape"]
        cfg = with_backbone(cfg_all, manifest).train
        files = split_files["labeled"]
        precision.set_mixed_precision(cfg.mixed_precision)  # layers take the policy when built
        keras.utils.set_random_seed(cfg.seed)
        ds, steps = toolkit.labeled_dataset(cfg, files, stats, image_shape, cfg.sampler, cfg.epochs)
        model = toolkit.build_model(cfg, image_shape, stats["num_classes"])
        optimizer = toolkit.sgd_for(cfg, cfg.epochs * steps)
        optimizer = precision.loss_scaled(optimizer, cfg.mixed_precision)
        model.compile(optimizer, losses.make_loss(cfg, stats, None),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], jit_compile=cfg.jit_compile,
                      steps_per_execution=cfg.steps_per_execution)  # as models/training.py compiles
        precision.set_mixed_precision("none")
        run_dir = os.path.join(work, name)
        progress = toolkit.EpochProgress(cfg.epochs, prefix=f"[{name}]")
        callbacks = toolkit.standard_callbacks(progress, run_dir, os.path.join(run_dir, "backup"), checkpoints=True)
        built.append({"name": name, "overrides": overrides, "model": model, "ds": ds, "steps": steps,
                      "callbacks": callbacks, "images": stats["num_examples"], "times": [], "epoch": 0,
                      "backbone": cfg.backbone})
    for v in built:  # one untimed turn each: tracing, the decode cache
        v["model"].fit(v["ds"], epochs=1, steps_per_epoch=v["steps"], verbose=0, callbacks=v["callbacks"])
        v["epoch"] = 1
    for r in range(a.rounds):
        for v in built:
            t0 = time.perf_counter()
            v["model"].fit(v["ds"], initial_epoch=v["epoch"], epochs=v["epoch"] + a.chunk, steps_per_epoch=v["steps"],
                           verbose=0, callbacks=v["callbacks"])
            v["times"].append((time.perf_counter() - t0) / a.chunk)
            v["epoch"] += a.chunk
        print(f"[lever-ab] round {r + 1}/{a.rounds}: " + ", ".join(f"{v['name']} {v['times'][-1]:.2f} s/epoch"
                                                                 for v in built), file=sys.stderr, flush=True)
    base = built[0]
    rows = []
    for v in built:
        ratios = [b / t for b, t in zip(base["times"], v["times"])]
        rows.append({"label": a.label, "variant": v["name"], "settings": v["overrides"], "backbone": v["backbone"],
                     "s_per_epoch": [round(t, 3) for t in v["times"]], "median_s_per_epoch": statistics.median(v["times"]),
                     "images_per_s": v["images"] / statistics.median(v["times"]),
                     "speedup_vs_first": statistics.median(ratios), "rounds": a.rounds, "chunk": a.chunk,
                     "baseline": base["name"], "date": time.strftime("%Y-%m-%d"),
                     "keras_backend": keras.backend.backend()})
        print(json.dumps(rows[-1]))
    return rows


def render(rows: list[dict]) -> None:
    lines = ["| label | variant | settings | backbone | s/epoch, each turn | median s/epoch | images/s | speed-up vs the "
             "baseline (median of per-round ratios) | baseline | date |", "|---" * 10 + "|"]
    for r in rows:
        settings = " ".join(f"{k}={v}" for k, v in r["settings"].items()) or "(preset)"
        lines.append(f"| {r['label']} | {r['variant']} | {settings} | {r['backbone']} | "
                     f"{', '.join(f'{t:.2f}' for t in r['s_per_epoch'])} | {r['median_s_per_epoch']:.2f} | "
                     f"{r['images_per_s']:.0f} | {r['speedup_vs_first']:.2f}x | {r['baseline']} | {r['date']} |")
    write_result(os.path.join(ROOT, "bench", "results", "lever_ab.md"), "The Trainer's speed levers, paired turn by turn",
                 __doc__.split("\n\n", 1)[0].strip(), "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
