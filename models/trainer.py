"""The classification Trainer's run_fn (TFX GenericExecutor, dotted path ``models.trainer.run_fn``): parse the
job, let the configured training mode (models/modes.py) train, export the SavedModel, write the summary.

models/ never imports tfx: ``fn_args`` is used only through its attributes (train_files, eval_files,
serving_model_dir, model_run_dir, custom_config, base_model); custom_config is a models.job.TrainerJob, which
models.toolkit.TrainingJob reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

from models import backbones, calibration, cluster, config, distribute, planner, precision, pseudo_label, replicas, toolkit
from models import job as trainer_job
from models.export import export_serving_model

SUMMARY_FILE = trainer_job.TRAINING_SUMMARY_FILE


def run_fn(fn_args) -> None:
    job = toolkit.TrainingJob.from_fn_args(fn_args)
    tf_config = cluster.read_tf_config()
    kind = distribute.resolve(job.train.distribute, job.train.local_workers, tf_config,
                              gpus=len(tf.config.list_physical_devices("GPU")),
                              cluster_launch=cluster.cluster_launch_of(fn_args) is not None)
    if kind != "none" and not job.mode.data_parallel:
        usable = "|".join(distribute.data_parallel_modes())
        if job.train.distribute != "auto":
            raise ValueError(f"train.distribute={job.train.distribute} resolved to {kind}, but semi.method="
                             f"{job.mode.name} trains in one process (data-parallel: semi.method={usable}); "
                             "set train.distribute=none")
        print(f"[trainer] train.distribute=auto: semi.method={job.mode.name} trains in one process (data-parallel: "
              f"semi.method={usable}), not {kind}", file=sys.stderr, flush=True)
        kind = "none"
    if kind != "none" and job.mode.inline_ssp:
        # the planner's inline SSP pre-trains the backbone in one process; each worker pre-training its own would
        # start the replicas from different weights, so the final model trains in one process after it
        if pseudo_label.planned_choice(job) == planner.SSP:
            job.single_process_reason = (f"the planner chose inline SSP, which pre-trains in one process: the final "
                                         f"model trains in one process too, not {kind}")
            print(f"[trainer] {job.single_process_reason}", file=sys.stderr, flush=True)
            kind = "none"
    if kind == "multi_worker":  # fresh processes: a multi-worker strategy must come before any TensorFlow op
        cluster.launch_workers(fn_args, job.train.local_workers, tf_config, "models.trainer",
                               {"fn_args": cluster.worker_fn_args(fn_args, trainer_job.TRAIN)},
                               "[trainer] multi-worker training")
        return
    train_and_export(fn_args, job, distribute.make_strategy(kind), tf_config)


def train_and_export(fn_args, job: toolkit.TrainingJob, strategy, tf_config: dict) -> None:
    """Train with the job's mode (data-parallel under ``strategy`` when given); the chief exports the SavedModel
    and writes the summary, every worker writes its final weights to the scratch folder."""
    with precision.training_policy(job.train.mixed_precision) as (policy, job.precision_reason):
        job.train = dataclasses.replace(job.train, mixed_precision=policy)  # auto resolved, for every reader below
        _train_and_export(fn_args, job, strategy, tf_config)


def _train_and_export(fn_args, job: toolkit.TrainingJob, strategy, tf_config: dict) -> None:
    cfg = job.train
    chief = cluster.is_chief(tf_config)
    if strategy is not None:
        job.strategy = strategy
        job.plan = distribute.plan_for(strategy, tf_config, cfg.batch_size, cfg.learning_rate, cfg,
                                       distribute.data_sharding_for(cfg.data_sharding, cfg.sampler), "[trainer]")
    if job.mode.online_pool:  # models/semi.py trains from its own start (scratch or the pre-trained backbone)
        job.start_for(job.train.epochs, unsupported=f"semi.method={job.mode.name} reads the pool online; its training "
                                                    "is not built to start from an earlier model")
    t0 = time.time()
    result = job.mode.trainer()(job)
    train_seconds = time.time() - t0
    model = distribute.final_model(result.model, strategy, job.plan, job.model_run_dir)
    if not chief:  # TF's multi-worker rule: one writer; the others' weights stay in their scratch folder
        replicas.barrier(strategy)  # leave when the chief has exported
        return
    tau = job.post_hoc_logit_adjust_tau
    logit_offset = -tau * np.log(np.asarray(job.stats["class_priors"], np.float32)) if tau else None
    fitted = None
    cal = job.calibration
    flip = config.test_time_flip(job.train)
    if cal.enabled:  # offsets fitted on the eval split's fit half; the gate judges the other half
        block = calibration.calibrate(model, cal, job.eval_files, job.image_shape, job.stats["num_classes"],
                                      job.stats.get("class_names"), logit_offset, test_time_flip=flip)
        total = np.asarray(block["offsets"], np.float32)
        fitted = total - (0.0 if logit_offset is None else logit_offset)
        logit_offset = total
        result.summary["calibration"] = block
        print(f"[trainer] calibration ({cal.method}) on {block['fit_examples']} validation images (the fit half): "
              f"balanced accuracy + {cal.worst_class_weight:g} x worst recall {block['objective_before']:.4f} -> "
              f"{block['objective_after']:.4f}; offsets "
              + ", ".join(f"{k} {v:+.2f}" for k, v in block["offsets_by_class"].items()), file=sys.stderr, flush=True)
    # what the model was trained on and from: a later run's warm start (models/retrain.py) and shift report read it
    trained = {"backbone": job.train.backbone, "class_counts": [int(n) for n in job.stats["class_counts"]],
               "start": (job.warm_start or {}).get("start")}
    export_serving_model(model, fn_args.serving_model_dir, job.image_shape, logit_offset,
                         class_names=job.stats.get("class_names"), calibration_offsets=fitted, test_time_flip=flip,
                         fit_method=job.image_fit, training=trained)
    # every weight, head included, beside the SavedModel: the final Trainer starts from the base model's (init=base),
    # a later retrain from the blessed model's (train.warm_start); 4 bytes a parameter
    backbones.save_backbone_weights(model, fn_args.serving_model_dir, file=backbones.CLASSIFIER_WEIGHTS_FILE)
    model.save(os.path.join(job.model_run_dir, "model.keras"))
    write_summary(job, result, train_seconds)
    replicas.barrier(strategy)


def write_summary(job: toolkit.TrainingJob, result: toolkit.TrainResult, train_seconds: float) -> dict:
    """training_summary.json in the model run dir: timing, history, the config, and the mode's own blocks."""
    weights = result.backbone_weights
    summary = {"train_seconds": train_seconds, "epochs": job.train.epochs, "history": result.history,
               "config": dataclasses.asdict(job.train), "mode": job.mode.name,
               "images_per_second": (result.images_seen / train_seconds) if train_seconds else None,
               "distribute": job.plan.as_dict() if job.plan is not None else
               {"strategy": "none", "workers": 1, "replicas": 1, "mixed_precision": job.train.mixed_precision,
                **({"reason": job.single_process_reason} if job.single_process_reason else {})},
               "mixed_precision_reason": job.precision_reason,
               "semi": None, "plan": None, "pseudo_labels": None, "inline_ssp": None, "calibration": None,
               "training_files": {"labeled": list(job.train_files), "pseudo_labeled": []},
               "training_class_counts": result.training_stats["class_counts"],
               "retrain": job.warm_start,  # started from the last blessed model or from scratch, and why
               # the load is strict, so every variable in the file was loaded
               "warm_start": {"base_model": weights, "variables": len(backbones.saved_backbone_names(weights))}
               if weights else None,
               **result.summary}
    with tf.io.gfile.GFile(os.path.join(job.model_run_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv=None) -> int:
    """One worker: ``python -m models.trainer JOB.json`` with TF_CONFIG set (models.cluster.launch), as every
    Trainer's worker (models.distribute.worker_main)."""
    return distribute.worker_main(argv, lambda fn_args, _job, strategy, tf_config: train_and_export(
        fn_args, toolkit.TrainingJob.from_fn_args(fn_args), strategy, tf_config), trainer_job.TRAIN)


if __name__ == "__main__":
    sys.exit(main())
