"""The classification Trainer's run_fn (TFX GenericExecutor, dotted path ``models.trainer.run_fn``): parse the
job, let the configured training mode (models/modes.py) train, export the SavedModel, write the summary.

models/ never imports tfx: ``fn_args`` is used only through its attributes (train_files, eval_files,
serving_model_dir, model_run_dir, custom_config, base_model); models.toolkit.TrainingJob lists the
custom_config keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
import tensorflow as tf

from models import backbones, toolkit
from models.export import export_serving_model

SUMMARY_FILE = "training_summary.json"


def run_fn(fn_args) -> None:
    job = toolkit.TrainingJob.from_fn_args(fn_args)
    t0 = time.time()
    result = job.mode.trainer()(job)
    train_seconds = time.time() - t0
    tau = fn_args.custom_config.get("post_hoc_logit_adjust_tau")
    logit_offset = -tau * np.log(np.asarray(job.stats["class_priors"], np.float32)) if tau else None
    export_serving_model(result.model, fn_args.serving_model_dir, job.image_shape, logit_offset,
                         class_names=job.stats.get("class_names"))
    result.model.save(os.path.join(job.model_run_dir, "model.keras"))
    write_summary(job, result, train_seconds)


def write_summary(job: toolkit.TrainingJob, result: toolkit.TrainResult, train_seconds: float) -> dict:
    """training_summary.json in the model run dir: timing, history, the config, and the mode's own blocks."""
    weights = result.backbone_weights
    summary = {"train_seconds": train_seconds, "epochs": job.train.epochs, "history": result.history,
               "config": dataclasses.asdict(job.train), "mode": job.mode.name,
               "images_per_second": (result.images_seen / train_seconds) if train_seconds else None,
               "semi": None, "plan": None, "pseudo_labels": None, "inline_ssp": None,
               "training_files": {"labeled": list(job.train_files), "pseudo_labeled": []},
               "training_class_counts": result.training_stats["class_counts"],
               # the load is strict, so every variable in the file was loaded
               "warm_start": {"base_model": weights, "variables": len(backbones.saved_backbone_names(weights))}
               if weights else None,
               **result.summary}
    with tf.io.gfile.GFile(os.path.join(job.model_run_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
