"""What a second local worker buys or costs, per Trainer (#31; the supervised-only batch table of #17,
bench/results/distribute.md, was a one-off study: its script is in git history, 5ab0770:bench/distribute_bench.py).

Every Trainer in one process (``train.distribute=none``) and on
two local workers (``train.local_workers=2``, the same global batch), per seed. Each Trainer's custom_config is the
pipeline's own (``pipeline.pipeline.training_job``, ``pseudo_label_base_job``, ``pretrain_job``, ``regression_job``
from ``load_config``), with the input paths the executor would add (``TrainerJob.with_inputs``, as
components/trainer.py), and its run_fn is called with a ``types.SimpleNamespace`` fn_args:

- ``supervised``: models.trainer.run_fn, semi.method=supervised (the default preset: logit-adjusted loss, class
  offsets calibrated on the validation split); score: test balanced accuracy (bench.common.evaluate).
- ``pseudo_label``: the final Trainer of semi.method=pseudo_label (init=base): per seed a base model is trained once
  in one process (``pseudo_label_base_job``) and the PseudoLabeler's executor (components/pseudo_labeler.py, Beam
  in this process) labels the pool with it; both rows train from that base model on labeled + pseudo-labeled
  images (the BaseTrainer's and the PseudoLabeler's time is not in the rows).
- ``fixmatch``, ``daso``: semi.method=fixmatch|daso, reading the pool (models/semi.py); the pool's pseudo-labels
  are scored on ``--eval-pool-size`` pool images an epoch.
- ``rotation``, ``moco``: models.ssp.run_fn, pretrain.method=rotation|moco on labeled + pool images
  (pretrain.data=labeled+unlabeled); score: the linear probe's accuracy on the validation split (ssp_summary.json).
- ``regression``: models.regression.run_fn on the tfx package's taxi CSV (the regression preset: sqrt-inverse LDS
  weights + FDS, batch 256), written as the GZIP tf.Examples CsvExampleGen makes, split 8:1:1 by a fixed
  permutation (the pipeline hash-splits), label statistics from models.density.derive_regression_stats as
  RegressionLabelStatsGen derives them; score: test MAE.

Every classification and SSP row trains ``--trainer-epochs`` epochs of at most ``--max-steps`` steps (the
trainers' max_steps_per_epoch); regression trains whole epochs. s/epoch and examples/s are over epochs 2..
(examples: images drawn, an unlabeled image counted once; pseudo-labeled images count as labeled ones); wall: the
whole run_fn (worker start-up and export included). Progress lines go to stderr.

Usage (inside the environment):
  tools/env exec python bench/distribute_bench.py [--trainer-epochs 3] [--max-steps 20]
      [--seeds 0,1] [--trainers supervised,pseudo_label,fixmatch,daso,rotation,moco,regression]
Writes bench/results/distribute_trainers.md and a .jsonl beside it.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import evaluate, prepared, write_result  # noqa: E402
from pipeline import pipeline as jobs  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402


def run_fn_args(root: str, train_files, eval_files, custom_config: dict, base_model=None):
    """What TFX's GenericExecutor hands a run_fn, for the attributes our run_fns read (a types.SimpleNamespace, its
    model folders under ``root``)."""
    fn_args = types.SimpleNamespace(train_files=list(train_files), eval_files=list(eval_files or []),
                                    serving_model_dir=os.path.join(root, "model", "Format-Serving"),
                                    model_run_dir=os.path.join(root, "model_run"), base_model=base_model,
                                    custom_config=custom_config)
    os.makedirs(fn_args.model_run_dir)
    return fn_args


# (row label, the settings that make it): one process, and two local workers at the same global batch
WORKER_SETTINGS = (("1 process", {"train.distribute": "none"}), ("2 workers", {"train.local_workers": 2}))


@dataclasses.dataclass
class Bench:
    """What the per-trainer rows share: the prepared classification data, the taxi rows, the schedule and a scratch
    folder; ``shared`` keeps what one seed's rows of a Trainer both read (the pseudo-label base model)."""

    data: str
    manifest: dict
    stats: dict
    files: dict
    scratch: str
    epochs: int
    max_steps: int
    eval_pool_size: int
    shared: dict = dataclasses.field(default_factory=dict)

    def schedule(self, seed: int) -> dict:
        return {"train.epochs": self.epochs, "train.max_steps_per_epoch": self.max_steps, "train.seed": seed,
                "pretrain.epochs": self.epochs, "pretrain.max_steps_per_epoch": self.max_steps, "pretrain.seed": seed}

    def folder(self, name: str) -> str:
        path = tempfile.mkdtemp(prefix=f"{name}-", dir=self.scratch)
        return path

    def label_stats_path(self) -> str:
        path = os.path.join(self.scratch, "label_stats.json")
        if not os.path.exists(path):
            with open(path, "w") as f:
                json.dump(self.stats, f)
        return path


def _timed(run_fn, fn_args, summary_file: str) -> tuple[float, dict]:
    t0 = time.time()
    run_fn(fn_args)
    wall = time.time() - t0
    with open(os.path.join(fn_args.model_run_dir, summary_file)) as f:
        return wall, json.load(f)


def _classification_row(b: Bench, summary: dict, fn_args, examples_per_epoch: float) -> dict:
    import keras

    model = keras.models.load_model(os.path.join(fn_args.model_run_dir, "model.keras"), compile=False)
    scores = evaluate(model, b.files["test"], b.manifest["image_shape"], b.stats)
    return {"batch": summary["config"]["batch_size"], "examples_per_epoch": examples_per_epoch,
            "final_loss": summary["history"][-1]["loss"],
            "score_name": "test balanced acc.", "score": scores["balanced_accuracy"]}


def _supervised_examples(b: Bench, summary: dict, num_examples: int) -> float:
    """Images drawn an epoch by the supervised loop: whole passes, or max_steps global batches."""
    batch = summary["distribute"].get("global_batch_size") or summary["config"]["batch_size"]
    steps = -(-num_examples // batch)
    return min(steps, b.max_steps) * batch if b.max_steps else steps * batch


def run_supervised(b: Bench, seed: int, how: dict) -> dict:
    from models import trainer

    cfg = load_config("default", {"semi.method": "supervised", **b.schedule(seed), **how})
    root = b.folder("supervised")
    job = jobs.training_job(cfg, b.manifest, root, b.data).with_inputs(label_stats_path=b.label_stats_path())
    fn_args = run_fn_args(root, b.files["labeled"], b.files["validation"], job.to_custom_config())
    wall, summary = _timed(trainer.run_fn, fn_args, trainer.SUMMARY_FILE)
    return {"wall_s": wall, "summary": summary,
            **_classification_row(b, summary, fn_args, _supervised_examples(b, summary, b.stats["num_examples"]))}


def run_semi(method: str):
    """FixMatch or DASO (models/semi.py): the Trainer of semi.method=``method``, the pool given as the executor
    gives it (its ``unlabeled`` files)."""

    def run_one(b: Bench, seed: int, how: dict) -> dict:
        from models import trainer

        cfg = load_config("default", {"semi.method": method, "semi.fixmatch.eval_pool_size": b.eval_pool_size,
                                      **b.schedule(seed), **how})
        root = b.folder(method)
        job = jobs.training_job(cfg, b.manifest, root, b.data).with_inputs(
            label_stats_path=b.label_stats_path(), unlabeled_files=b.files["unlabeled"])
        fn_args = run_fn_args(root, b.files["labeled"], b.files["validation"], job.to_custom_config())
        wall, summary = _timed(trainer.run_fn, fn_args, trainer.SUMMARY_FILE)
        semi = summary["semi"]
        per_epoch = semi["total_steps"] * (semi["labeled_batch"] + semi["unlabeled_batch"]) / summary["epochs"]
        return {"wall_s": wall, "summary": summary, **_classification_row(b, summary, fn_args, per_epoch)}

    return run_one


def _pseudo_labels(b: Bench, seed: int) -> dict:
    """The BaseTrainer (one process) and the PseudoLabeler's executor for this seed, once: the final Trainer's inputs
    {pseudo_labeled_files, pseudo_label_stats_path, init_model} as components/trainer.py's Executor adds them."""
    if seed in b.shared:
        return b.shared[seed]
    from tfx.types import artifact_utils, standard_artifacts

    from components.artifacts import PSEUDO_LABEL_STATS_FILE, PseudoLabelStatistics
    from components.pseudo_labeler import OUTPUT_SPLIT, Executor
    from models import trainer

    cfg = load_config("default", {"semi.method": "pseudo_label", **b.schedule(seed), "train.distribute": "none"})
    root = b.folder(f"pseudo_label_base-{seed}")
    job = jobs.pseudo_label_base_job(cfg, b.manifest, root, b.data).with_inputs(label_stats_path=b.label_stats_path())
    fn_args = run_fn_args(root, b.files["labeled"], b.files["validation"], job.to_custom_config())
    print(f"[bench] pseudo_label: the base model, seed {seed} (one process)", file=sys.stderr, flush=True)
    t0 = time.time()
    trainer.run_fn(fn_args)

    def examples(uri: str, splits: dict) -> standard_artifacts.Examples:
        artifact = standard_artifacts.Examples()
        artifact.uri = uri
        artifact.split_names = artifact_utils.encode_split_names(list(splits))
        for split, folder in splits.items():  # the prepared folders as the ExampleGen's split folders
            os.makedirs(uri, exist_ok=True)
            os.symlink(folder, os.path.join(uri, f"Split-{split}"))
        return artifact

    model = standard_artifacts.Model()
    model.uri = os.path.dirname(fn_args.serving_model_dir)
    labeled = examples(os.path.join(root, "labeled"), {"eval": os.path.join(b.data, "validation")})
    pool = examples(os.path.join(root, "pool"), {"unlabeled": os.path.join(b.data, "unlabeled")})
    out = standard_artifacts.Examples()
    out.uri = os.path.join(root, "pseudo_labeled")
    statistics = PseudoLabelStatistics()
    statistics.uri = os.path.join(root, "pseudo_label_stats")
    os.makedirs(statistics.uri)
    pl = cfg.semi.pseudo_label  # as pipeline.pipeline wires the PseudoLabeler
    Executor().Do({"model": [model], "unlabeled_examples": [pool], "examples": [labeled]},
                  {"pseudo_labeled_examples": [out], "statistics": [statistics]},
                  {"num_classes": int(b.manifest["num_classes"]), "confidence_threshold": pl.threshold,
                   "top_k_per_class": pl.top_k, "eval_split": "eval"})
    print(f"[bench] pseudo_label: base model and pseudo-labels in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    b.shared[seed] = {"pseudo_labeled_files": [os.path.join(artifact_utils.get_split_uri([out], OUTPUT_SPLIT), "*")],
                      "pseudo_label_stats_path": os.path.join(statistics.uri, PSEUDO_LABEL_STATS_FILE),
                      "init_model": fn_args.serving_model_dir}
    return b.shared[seed]


def run_pseudo_label(b: Bench, seed: int, how: dict) -> dict:
    from models import trainer

    inputs = _pseudo_labels(b, seed)
    cfg = load_config("default", {"semi.method": "pseudo_label", **b.schedule(seed),
                                  "semi.pseudo_label.final_epochs": b.epochs, **how})
    root = b.folder("pseudo_label")
    job = jobs.training_job(cfg, b.manifest, root, b.data).with_inputs(label_stats_path=b.label_stats_path(), **inputs)
    fn_args = run_fn_args(root, b.files["labeled"], b.files["validation"], job.to_custom_config())
    wall, summary = _timed(trainer.run_fn, fn_args, trainer.SUMMARY_FILE)
    n = sum(summary["training_class_counts"])  # labeled + accepted pseudo-labels
    return {"wall_s": wall, "summary": summary,
            **_classification_row(b, summary, fn_args, _supervised_examples(b, summary, n))}


def run_ssp(method: str):
    """The pre-training Trainer (models.ssp.run_fn), pretrain.method=``method``, on labeled + pool images."""

    def run_one(b: Bench, seed: int, how: dict) -> dict:
        from models import ssp

        cfg = load_config("default", {"pretrain.method": method, "pretrain.data": "labeled+unlabeled",
                                      **b.schedule(seed), **how})
        root = b.folder(method)
        job = jobs.pretrain_job(cfg, b.manifest, root).with_inputs(unlabeled_files=b.files["unlabeled"])
        fn_args = run_fn_args(root, b.files["labeled"], b.files["validation"], job.to_custom_config())
        wall, summary = _timed(ssp.run_fn, fn_args, ssp.SUMMARY_FILE)
        batch = summary["distribute"].get("global_batch_size") or summary["config"]["batch_size"]
        return {"wall_s": wall, "summary": summary, "batch": batch, "examples_per_epoch": summary["steps_per_epoch"] * batch,
                "final_loss": summary["final_loss"], "score_name": "linear probe acc. (validation)",
                "score": summary["linear_probe_accuracy"]}

    return run_one


def taxi_split(scratch: str, seed: int = 0) -> dict:
    """The tfx package's taxi CSV as GZIP tf.Examples (CsvExampleGen's encoding: a column's type from
    models.tabular.COLUMN_TYPES, an empty cell an empty feature), split 8:1:1 by a fixed permutation: {split:
    [file]}."""
    import tensorflow as tf

    from models.tabular import COLUMN_TYPES

    folder = os.path.join(scratch, "taxi")
    if os.path.isdir(folder):
        return {s: [os.path.join(folder, f"{s}.gz")] for s in ("train", "eval", "test")}
    os.makedirs(folder)
    with open(os.path.join(jobs.default_csv_dir(), "data.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    order = np.random.default_rng(seed).permutation(len(rows))
    cut = (int(0.8 * len(rows)), int(0.9 * len(rows)))
    parts = {"train": order[:cut[0]], "eval": order[cut[0]:cut[1]], "test": order[cut[1]:]}

    def feature(kind: str, cell: str) -> tf.train.Feature:
        if kind == "float":
            return tf.train.Feature(float_list=tf.train.FloatList(value=[float(cell)] if cell else []))
        if kind == "int":
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(float(cell))] if cell else []))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[cell.encode()] if cell else []))

    files = {}
    for split, index in parts.items():
        files[split] = [os.path.join(folder, f"{split}.gz")]
        with tf.io.TFRecordWriter(files[split][0], options="GZIP") as w:
            for i in index:
                w.write(tf.train.Example(features=tf.train.Features(feature={
                    c: feature(kind, rows[i][c]) for c, kind in COLUMN_TYPES.items()})).SerializeToString())
    return files


def regression_stats(cfg, train_files) -> dict:
    """RegressionLabelStatsGen's statistics of the training rows (components/regression_label_stats_gen.py derives
    them in Beam from the same histogram): the LDS weights, bins and groups the Trainer reads."""

    from models.density import derive_regression_stats
    from models.tabular import read_split, valid_rows

    r = cfg.regression
    values, present = read_split(train_files, [r.target])
    y = values[r.target][valid_rows(values[r.target], present[r.target], r.max_target)]
    bins, counts = np.unique(np.floor(y / r.bin_width).astype(int), return_counts=True)
    stats = derive_regression_stats(dict(zip(bins.tolist(), counts.tolist())), r.bin_width, r.num_bins, r.reweight,
                                    r.lds, r.lds_kernel, r.lds_ks, r.lds_sigma, r.many_shot_above, r.few_shot_below)
    return {**stats, "target": r.target, "max_target": r.max_target}


def run_regression(b: Bench, seed: int, how: dict) -> dict:
    import keras

    from models import regression

    cfg = load_config("regression", {"train.epochs": b.epochs, "train.seed": seed, **how})
    files = taxi_split(b.scratch)
    root = b.folder("regression")
    stats_path = os.path.join(root, "label_stats.json")
    stats = regression_stats(cfg, files["train"])
    with open(stats_path, "w") as f:
        json.dump(stats, f)
    csv_dir = jobs.default_csv_dir()
    job = jobs.regression_job(cfg, csv_dir, root).with_inputs(label_stats_path=stats_path)
    fn_args = run_fn_args(root, files["train"], files["eval"], job.to_custom_config())
    wall, summary = _timed(regression.run_fn, fn_args, regression.TRAINING_SUMMARY_FILE)
    model = keras.models.load_model(os.path.join(fn_args.model_run_dir, "model.keras"), compile=False)
    inputs, target = regression.load_training_rows(files["test"], cfg.regression, stats)
    metrics = regression.regression_metrics(target, regression.predict(model, inputs), stats)
    per_epoch = summary["rows_per_second"] * summary["train_seconds"] / summary["epochs"]
    return {"wall_s": wall, "summary": summary, "batch": cfg.train.batch_size, "examples_per_epoch": per_epoch,
            "final_loss": summary["history"][-1]["loss"], "score_name": "test MAE", "score": metrics["mae"]}


# trainer -> its rows' runner (Bench, seed, the worker settings) -> {wall_s, summary, batch (one process's),
# examples_per_epoch, final_loss, score_name, score}
TRAINERS = {
    "supervised": run_supervised,
    "pseudo_label": run_pseudo_label,
    "fixmatch": run_semi("fixmatch"),
    "daso": run_semi("daso"),
    "rotation": run_ssp("rotation"),
    "moco": run_ssp("moco"),
    "regression": run_regression,
}


def trainers_table(a) -> None:
    """One process against two local workers, per Trainer (bench/results/distribute_trainers.md)."""
    names = a.trainers.split(",")
    unknown = sorted(set(names) - set(TRAINERS))
    if unknown:
        raise SystemExit(f"unknown trainers {unknown}; choose from {list(TRAINERS)}")
    data = ensure_data(load_config("default"))
    manifest, stats, files = prepared(data)
    rows = ["| trainer | seed | workers / replicas | global batch | epochs | s/epoch (epochs 2..) | examples/s | "
            "vs one process | wall s | final loss | score |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    results = []
    out = "bench/results/distribute_trainers.md"
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        b = Bench(data, manifest, stats, files, scratch, a.trainer_epochs, a.max_steps, a.eval_pool_size)
        for seed in [int(s) for s in a.seeds.split(",")]:
            for name in names:
                base = None
                for label, how in WORKER_SETTINGS:
                    print(f"[bench] {name}, seed {seed}, {label}", file=sys.stderr, flush=True)
                    r = TRAINERS[name](b, seed, how)
                    summary = r.pop("summary")
                    d = summary["distribute"]
                    steady = [h["seconds"] for h in summary["history"][1:]] or [summary["history"][0]["seconds"]]
                    per_s = r["examples_per_epoch"] * len(steady) / sum(steady)
                    base = base or per_s
                    row = {"trainer": name, "seed": seed, "configuration": label, "workers": d["workers"],
                           "replicas": d["replicas"], "global_batch": d.get("global_batch_size") or r.pop("batch"),
                           "epochs": len(summary["history"]),
                           "steady_s_per_epoch": sum(steady) / len(steady), "examples_per_s": per_s,
                           "vs_one_process": per_s / base, **r, "distribute": d}
                    results.append(row)
                    print(f"[bench] {name}, seed {seed}, {label}: {row['steady_s_per_epoch']:.2f} s/epoch, "
                          f"{per_s:.0f} examples/s, wall {r['wall_s']:.0f} s, {r['score_name']} {r['score']:.4f}",
                          file=sys.stderr, flush=True)
                    rows.append(f"| {name} | {seed} | {row['workers']} / {row['replicas']} | {row['global_batch']} | "
                                f"{row['epochs']} | {row['steady_s_per_epoch']:.2f} | {per_s:.0f} | "
                                f"{row['vs_one_process']:.2f}x | {r['wall_s']:.1f} | {r['final_loss']:.4f} | "
                                f"{r['score_name']} {r['score']:.4f} |")
                    with open(out.replace(".md", ".jsonl"), "w") as f:  # rewritten after every row: a stop keeps them
                        for result in results:
                            f.write(json.dumps(result) + "\n")
    description = (
        f"Every Trainer's run_fn with the pipeline's own job (load_config + pipeline.pipeline's job builders), in one "
        f"process (train.distribute=none) and on two local workers (train.local_workers=2, the same global batch: "
        f"MultiWorkerMirroredStrategy, ring all-reduce), on this machine's {os.cpu_count()} cores. Classification and "
        f"SSP: the default preset's data ({stats['num_examples']} labeled images, Fashion-MNIST-LT rho=100, a pool of "
        f"{manifest['splits']['unlabeled']['num_examples']}), resnet8, {a.trainer_epochs} epochs of at most "
        f"{a.max_steps} steps; FixMatch / DASO score {a.eval_pool_size} pool images an epoch; pseudo_label: the final "
        "Trainer (init=base) from a base model trained once a seed in one process (not timed here). Regression: the "
        f"taxi CSV (regression preset, LDS + FDS), {a.trainer_epochs} whole epochs. examples/s = examples drawn in "
        "epochs 2.. / their seconds (an unlabeled image counted once); vs one process: the same trainer and seed; wall "
        "= the whole run_fn (worker start-up, export). Scores: test balanced accuracy (classification, the model "
        "before its calibration offsets), the linear probe on the validation split (SSP), test MAE (regression).")
    write_result(out, "One process against two local workers, per trainer", description, "\n".join(rows))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", default="0,1", help="comma list; the throughput rows are per seed")
    p.add_argument("--trainers", default=",".join(TRAINERS), help="comma list of the trainers table's rows")
    p.add_argument("--trainer-epochs", type=int, default=3, help="the trainers table's epochs")
    p.add_argument("--max-steps", type=int, default=20, help="the trainers table's steps an epoch at most "
                   "(train.max_steps_per_epoch, pretrain.max_steps_per_epoch; not regression)")
    p.add_argument("--eval-pool-size", type=int, default=1000, help="semi.fixmatch.eval_pool_size of FixMatch / DASO")
    a = p.parse_args()
    trainers_table(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
