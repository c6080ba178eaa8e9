"""Imbalanced regression on tabular examples (the Chicago taxi trips): input, model, training, export.

The Trainer's ``run_fn`` (dotted path ``models.regression.run_fn``) reads the CsvExampleGen
TFRecords, drops the rows the bad-row policy names (counted by LabelStatsGen before training),
builds an MLP whose preprocessing lives inside the model (Normalization, IntegerLookup,
StringLookup: no tensorflow_transform), trains it with L1 (or MSE) loss weighted per target bin
(LDS, :mod:`models.density`) and optionally Feature Distribution Smoothing
(:mod:`models.layers.fds`), and exports a SavedModel with two signatures:

  serving_default     one tensor per named feature, shape (batch,) -> prediction (batch,) float32
                      (a JSON request {"instances": [{"trip_miles": 1.2, ...}]} maps onto it)
  serving_tf_example  examples: serialized tf.train.Example (batch,) -> prediction

models/ never imports tfx: ``fn_args`` is used only through its attributes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from scipy.stats import gmean

from models import cluster, distribute, precision, replicas
from models.config import RegressionConfig, TrainConfig
from models.density import BIN_GROUPS, bin_index
from models.export import SERVING_DEFAULT, SERVING_TF_EXAMPLE, write_serving_metadata
from models.inputs import untuned
from models.job import REGRESSION, TRAINING_SUMMARY_FILE, TrainerJob
from models.layers.fds import FDSUpdate, FeatureDistributionSmoothing
from models.tabular import LOG_SCALED, feature_columns, model_columns, parse_examples, read_split, to_model_inputs, valid_rows
from models.toolkit import Backup, EpochProgress

TARGET_BUCKET = "target_bucket"  # the extra training input FDS groups features by


# --- the bad-row policy (one definition, used by LabelStatsGen's Beam job, the Trainer and the gate) ---


# --- input ---


# --- model ---

@keras.saving.register_keras_serializable(package="longtail")
class Log1p(keras.layers.Layer):
    """log(1 + max(x, 0)) for long-tailed non-negative numbers; NaN (missing) stays NaN."""

    def call(self, x):
        return keras.ops.log1p(keras.ops.maximum(x, 0.0))


@keras.saving.register_keras_serializable(package="longtail")
class MissingIndicator(keras.layers.Layer):
    """[x, 0] where x is finite, [0, 1] where it is missing or non-finite: after Normalization,
    0 is the training mean, so a missing value is imputed by the mean and flagged."""

    def call(self, x):
        finite = keras.ops.isfinite(x)
        return keras.ops.concatenate([keras.ops.where(finite, x, 0.0), 1.0 - keras.ops.cast(finite, x.dtype)], axis=-1)


def _numeric_stats(v: np.ndarray, log: bool) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if log:
        v = np.log1p(np.maximum(v, 0))
    if v.size == 0:
        return 0.0, 1.0
    return float(v.mean()), float(max(v.var(), 1e-6))


def build_regressor(cfg: RegressionConfig, train_inputs: dict, train_target: np.ndarray, num_bins: int):
    """(model, encoder, fds layer or None). Vocabularies and normalisation come from the training rows."""
    inputs, parts = {}, []
    kinds = feature_columns(cfg)
    for c in kinds["numeric"]:
        inputs[c] = x = keras.Input((1,), dtype="float32", name=c)
        log = c in LOG_SCALED
        if log:
            x = Log1p(name=f"{c}_log1p")(x)
        mean, var = _numeric_stats(train_inputs[c].reshape(-1), log)
        x = keras.layers.Normalization(mean=mean, variance=var, name=f"{c}_norm")(x)
        parts.append(MissingIndicator(name=f"{c}_missing")(x))
    for c in kinds["integer"]:
        inputs[c] = x = keras.Input((1,), dtype="int64", name=c)
        vocab = sorted(int(v) for v in np.unique(train_inputs[c]) if v >= 0)  # -1 (missing) is the OOV token
        parts.append(keras.layers.IntegerLookup(vocabulary=vocab, output_mode="one_hot", name=f"{c}_lookup")(x))
    for c in kinds["string"]:
        inputs[c] = x = keras.Input((1,), dtype="string", name=c)
        vocab = sorted({v.decode() if isinstance(v, bytes) else str(v) for v in train_inputs[c].reshape(-1)} - {""})
        parts.append(keras.layers.StringLookup(vocabulary=vocab, output_mode="one_hot", name=f"{c}_lookup")(x))
    x = keras.layers.Concatenate(name="features")(parts)
    for i, units in enumerate(int(u) for u in cfg.hidden_units.split(",") if u.strip()):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}")(x)
    encoder = keras.Model(inputs, x, name="encoder")
    fds, all_inputs = None, dict(inputs)
    if cfg.fds:
        all_inputs[TARGET_BUCKET] = bucket = keras.Input((), dtype="int32", name=TARGET_BUCKET)
        fds = FeatureDistributionSmoothing(num_bins, 0, cfg.fds_kernel, cfg.fds_ks, cfg.fds_sigma, cfg.fds_momentum,
                                           cfg.fds_start_update, cfg.fds_start_smooth, name="fds")
        x = fds(x, bucket)
    # The output starts at the training median, so early steps fit the shape, not the offset.
    out = keras.layers.Dense(1, bias_initializer=keras.initializers.Constant(float(np.median(train_target))),
                             name="prediction")(x)
    return keras.Model(all_inputs, out, name="regressor"), encoder, fds


# --- training ---

def example_weights(cfg: RegressionConfig, stats: dict, bins: np.ndarray) -> np.ndarray:
    if cfg.reweight == "none":
        return np.ones(len(bins), np.float32)
    weights = np.asarray(stats["bin_weights"], np.float32)
    if stats.get("reweight") != cfg.reweight or bool(stats.get("lds", {}).get("enabled")) != cfg.lds:
        raise ValueError(f"label statistics were computed for reweight={stats.get('reweight')}, lds={stats.get('lds')}; "
                         f"the trainer asks for reweight={cfg.reweight}, lds={cfg.lds}")
    return weights[bins]


def train_regressor(cfg: RegressionConfig, train: TrainConfig, inputs: dict, target: np.ndarray, stats: dict,
                    extra_callbacks=(), verbose_prefix: str = "[trainer]", backup_dir: str | None = None,
                    strategy=None, plan: distribute.Plan | None = None):
    """Train on in-memory rows (already filtered by the bad-row policy); return (model, history). With a
    ``backup_dir`` (BackupAndRestore, after FDS's epoch-end update so its statistics are in the backup), a training
    killed mid-way and run again with the same inputs resumes after its last finished epoch. ``strategy`` / ``plan``
    (models/distribute.py): the same training, data-parallel, with the custom loop (:func:`train_distributed`)."""
    if strategy is not None:
        return train_distributed(cfg, train, inputs, target, stats, strategy, plan, verbose_prefix, backup_dir)
    keras.utils.set_random_seed(train.seed)
    num_bins, width = stats["num_bins"], stats["bin_width"]
    bins = bin_index(target, width, num_bins)
    weights = example_weights(cfg, stats, bins)
    model, encoder, fds = build_regressor(cfg, inputs, target, num_bins)
    x = dict(inputs)
    if fds is not None:
        x[TARGET_BUCKET] = bins.astype(np.int32)
    n = len(target)
    ds = (untuned(tf.data.Dataset.from_tensor_slices((x, target.astype(np.float32).reshape(-1, 1), weights)))
          .shuffle(n, seed=train.seed, reshuffle_each_iteration=True).batch(train.batch_size).prefetch(tf.data.AUTOTUNE))
    steps = -(-n // train.batch_size)
    if train.max_steps_per_epoch:
        steps = min(steps, train.max_steps_per_epoch)
        ds = ds.repeat()
    loss = {"l1": "mean_absolute_error", "mse": "mean_squared_error"}.get(cfg.objective)
    if loss is None:
        raise ValueError(f"unknown objective {cfg.objective!r}; choose l1 or mse")
    model.compile(keras.optimizers.Adam(cfg.adam_learning_rate), loss=loss,
                  metrics=[keras.metrics.MeanAbsoluteError(name="mae")])
    progress = EpochProgress(train.epochs, prefix=verbose_prefix)
    callbacks = [progress]
    if fds is not None:
        # The whole training set as one "batch", encoded by Keras' compiled predict rather than eager calls per batch.
        rows = untuned(tf.data.Dataset.from_tensor_slices(inputs)).batch(4096)  # a dataset: predict refuses NumPy string arrays
        callbacks.append(FDSUpdate(fds, lambda ds: encoder.predict(ds, verbose=0), [(rows, bins)]))
    if backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=True))
    callbacks += list(extra_callbacks)
    model.fit(ds, epochs=train.epochs, steps_per_epoch=steps, verbose=0, callbacks=callbacks, shuffle=False)  # ds is shuffled
    return model, progress.history


def per_example_loss(objective: str):
    """The per-example term of the regression objective (l1: |y - p|, mse: (y - p)^2), as Keras' loss of that name."""
    fns = {"l1": keras.losses.mean_absolute_error, "mse": keras.losses.mean_squared_error}
    if objective not in fns:
        raise ValueError(f"unknown objective {objective!r}; choose l1 or mse")
    return fns[objective]


def shard_rows(n: int, workers: int, index: int) -> np.ndarray:
    """The rows worker ``index`` of ``workers`` trains on (and encodes for FDS): every workers-th row from index."""
    return np.arange(index, n, workers)


def train_distributed(cfg: RegressionConfig, train: TrainConfig, inputs: dict, target: np.ndarray, stats: dict,
                      strategy, plan: distribute.Plan, verbose_prefix: str = "[trainer]", backup_dir: str | None = None):
    """:func:`train_regressor` under a tf.distribute strategy, with a custom loop (Keras 3's ``model.fit`` fails under
    MultiWorkerMirroredStrategy: models/distribute.py).

    Worker i of n trains on the rows i, i + n, ... (:func:`shard_rows`), shuffled each epoch, in per-replica batches
    of ``plan.per_replica_batch_size`` (``distribute_datasets_from_function``; the global batch
    ``plan.global_batch_size``). Each replica's loss is sum_i w_i l_i / global batch (the LDS example weights w;
    Keras' sum_over_batch_size mean, as the single-process ``model.fit``), its gradients summed across replicas by the
    optimizer. FDS: at each epoch's end every worker encodes its own rows, and the layer's per-bucket count, sum and
    centred sum of squares are summed across replicas (:meth:`FeatureDistributionSmoothing.epoch_moments`,
    :func:`models.replicas.replica_sums`) before the update, so the statistics are one process's over all the
    epoch's training rows, and the same in every replica. The chief backs up after the update."""
    keras.utils.set_random_seed(train.seed)
    num_bins, width = stats["num_bins"], stats["bin_width"]
    bins = bin_index(target, width, num_bins)
    weights = example_weights(cfg, stats, bins)
    loss_fn = per_example_loss(cfg.objective)
    with strategy.scope():
        model, encoder, fds = build_regressor(cfg, inputs, target, num_bins)
        optimizer = keras.optimizers.Adam(plan.learning_rate)
        optimizer = precision.loss_scaled(optimizer, train.mixed_precision)
        optimizer.build(model.trainable_variables)
    x = dict(inputs)
    if fds is not None:
        x[TARGET_BUCKET] = bins.astype(np.int32)
    n = len(target)
    mine = shard_rows(n, plan.workers, plan.worker_index)
    steps = -(-n // plan.global_batch_size)
    if train.max_steps_per_epoch:
        steps = min(steps, train.max_steps_per_epoch)
    local = {k: v[mine] for k, v in x.items()}
    y_local, w_local = target.astype(np.float32).reshape(-1, 1)[mine], weights[mine]

    def dataset_fn(context):
        # the worker's rows; its local replicas (one a worker on CPU) take turns at its batches
        ds = untuned(tf.data.Dataset.from_tensor_slices((local, y_local, w_local)))
        return (ds.shuffle(len(mine), seed=train.seed + context.input_pipeline_id, reshuffle_each_iteration=True)
                .repeat().batch(context.get_per_replica_batch_size(plan.global_batch_size), drop_remainder=True)
                .prefetch(tf.data.AUTOTUNE))

    data = iter(strategy.distribute_datasets_from_function(dataset_fn))
    scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(batch):
        features, y, w = batch
        with tf.GradientTape() as tape:
            prediction = tf.cast(model(features, training=True), tf.float32)
            terms = loss_fn(y, prediction)  # (batch,)
            value = tf.nn.compute_average_loss(terms, sample_weight=w, global_batch_size=plan.global_batch_size)
            scaled = optimizer.scale_loss(value) if scaling else value
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return {"loss": value, "abs": tf.reduce_sum(tf.abs(prediction[:, 0] - y[:, 0])),
                "count": tf.cast(tf.shape(y)[0], tf.float32)}

    encode = tf.function(lambda batch: tf.cast(encoder(batch, training=False), tf.float32))
    rows = untuned(tf.data.Dataset.from_tensor_slices({k: v for k, v in local.items() if k != TARGET_BUCKET})).batch(4096)
    backup = Backup(backup_dir, plan.chief) if backup_dir else None
    first = backup.restore(model, optimizer) if backup else 0
    progress = EpochProgress(train.epochs, prefix=verbose_prefix)

    def fds_epoch(epoch):
        fds.current_epoch.assign(epoch)  # cross-replica: every replica's copy

    def fds_statistics(epoch):
        if epoch >= fds.start_update:
            features = np.concatenate([encode(batch).numpy() for batch in rows]) if len(mine) else \
                np.zeros((0, fds.feature_dim), np.float32)
            moments = replicas.replica_sums(strategy, fds.epoch_moments, features, local[TARGET_BUCKET])
            fds.update_last_epoch_stats(epoch)
            fds.apply_moments(*moments, epoch)

    distribute.run_epochs(distribute.global_step(strategy, replica_step), data, steps, first, train.epochs,
                          lambda t, steps: {"loss": t["loss"] / max(steps, 1), "mae": t["abs"] / max(t["count"], 1.0)},
                          model=model, optimizer=optimizer, before_epoch=fds_epoch if fds is not None else None,
                          after_epoch=fds_statistics if fds is not None else None, progress=progress.report,
                          backup=backup)
    if backup is not None:
        backup.remove()
    return model, progress.history


def predict(model: keras.Model, inputs: dict, batch_size: int = 4096) -> np.ndarray:
    x = dict(inputs)
    if TARGET_BUCKET in {i.name for i in model.inputs}:
        x[TARGET_BUCKET] = np.zeros(len(next(iter(inputs.values()))), np.int32)  # ignored at inference
    ds = untuned(tf.data.Dataset.from_tensor_slices(x)).batch(batch_size)
    return np.concatenate([keras.ops.convert_to_numpy(model(b, training=False)).reshape(-1) for b in ds])


# --- metrics ---

def _group_metrics(err: np.ndarray) -> dict:
    if err.size == 0:
        return {"mae": None, "mse": None, "gmean": None, "count": 0}
    with np.errstate(divide="ignore"):
        g = float(gmean(np.abs(err)))
    return {"mae": float(np.abs(err).mean()), "mse": float((err**2).mean()), "gmean": g, "count": int(err.size)}


def regression_metrics(target, prediction, stats: dict) -> dict:
    """MAE, MSE and geometric-mean absolute error overall and per bin group (by the bin's training
    count, as the paper's shot metrics), plus per-bin MAE and counts."""
    target, prediction = np.asarray(target, np.float64), np.asarray(prediction, np.float64)
    err = prediction - target
    bins = bin_index(target, stats["bin_width"], stats["num_bins"])
    groups = np.asarray(stats["bin_groups"])[bins] if len(bins) else np.asarray([], str)
    overall = _group_metrics(err)
    out = {"num_examples": overall["count"], "mae": overall["mae"], "mse": overall["mse"], "gmean": overall["gmean"]}
    for g in BIN_GROUPS:
        m = _group_metrics(err[groups == g])
        for k in ("mae", "mse", "gmean"):
            out[f"{g}_shot_{k}"] = m[k]
        out[f"{g}_shot_count"] = m["count"]
    per_bin_count = np.bincount(bins, minlength=stats["num_bins"])
    per_bin_abs = np.bincount(bins, weights=np.abs(err), minlength=stats["num_bins"])
    out["per_bin_count"] = per_bin_count.tolist()
    out["per_bin_mae"] = [float(s / c) if c else None for s, c in zip(per_bin_abs, per_bin_count)]
    return out


# --- export ---

def export_regressor(model: keras.Model, export_dir: str, cfg: RegressionConfig) -> None:
    """SavedModel with a named-features signature (JSON) and a serialized tf.Example one."""
    kinds = feature_columns(cfg)
    dtypes = {**{c: tf.float32 for c in kinds["numeric"]}, **{c: tf.int64 for c in kinds["integer"]},
              **{c: tf.string for c in kinds["string"]}}
    with_bucket = TARGET_BUCKET in {i.name for i in model.inputs}

    def predict_features(features):
        x = {c: tf.reshape(tf.cast(features[c], dtypes[c]), [-1, 1]) for c in dtypes}
        if with_bucket:  # FDS is the identity at inference: the bucket input is never read
            x[TARGET_BUCKET] = tf.zeros_like(x[kinds["numeric"][0]][:, 0], tf.int32)
        return {"prediction": tf.reshape(model(x, training=False), [-1])}

    def from_examples(examples):
        values, _ = parse_examples(examples, list(dtypes))
        values = {c: tf.cast(v, dtypes[c]) for c, v in values.items()}  # int-stored numerics (trip_seconds) to float
        return predict_features(values)

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SERVING_DEFAULT, predict_features,
                         input_signature=[{c: tf.TensorSpec([None], d, name=c) for c, d in dtypes.items()}])
    archive.add_endpoint(SERVING_TF_EXAMPLE, from_examples,
                         input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    archive.write_out(export_dir, verbose=False)
    write_serving_metadata(export_dir, {"task": "regression", "target": cfg.target,
                                        "features": {c: d.name for c, d in dtypes.items()}})


# --- the Trainer entry point ---

def load_training_rows(files, cfg: RegressionConfig, stats: dict) -> tuple[dict, np.ndarray]:
    """Model inputs and targets of the rows the bad-row policy keeps (LabelStatsGen counted the rest)."""
    values, present = read_split(files, [*model_columns(cfg), cfg.target])
    keep = valid_rows(values[cfg.target], present[cfg.target], stats["max_target"])
    inputs = to_model_inputs({c: v[keep] for c, v in values.items()}, cfg)
    return inputs, values[cfg.target][keep].astype(np.float64)


def run_fn(fn_args) -> None:
    """TFX GenericExecutor entry point (dotted path models.regression.run_fn); custom_config: a models.job.TrainerJob
    of stage REGRESSION. train.distribute resolves as the classification Trainer's (models/trainer.py): none and
    mirrored train in this process; multi_worker in fresh worker processes (``python -m models.regression JOB``,
    :func:`main`), of which the chief exports."""
    job = TrainerJob.from_custom_config(fn_args.custom_config, REGRESSION)
    distribute.run_or_launch(fn_args, REGRESSION, job.train.distribute, job.train.local_workers, "models.regression",
                             lambda strategy, tf_config: train_and_export(fn_args, job, strategy, tf_config),
                             "[trainer] multi-worker training")


def train_and_export(fn_args, job: TrainerJob, strategy, tf_config: dict) -> None:
    """Train (data-parallel under ``strategy`` when given, in train.mixed_precision); the chief exports a float32
    SavedModel and writes the summary while the other workers wait at a barrier."""
    with precision.training_policy(job.train.mixed_precision) as (policy, _):
        job = dataclasses.replace(job, train=dataclasses.replace(job.train, mixed_precision=policy))  # auto resolved
        _train_and_export(fn_args, job, strategy, tf_config)


def _train_and_export(fn_args, job: TrainerJob, strategy, tf_config: dict) -> None:
    cfg, train = job.regression, job.train
    with open(job.label_stats_path) as f:
        stats = json.load(f)
    inputs, target = load_training_rows(fn_args.train_files, cfg, stats)
    if len(target) != stats["num_examples"]:
        raise RuntimeError(f"the Trainer kept {len(target)} training rows, LabelStatsGen counted {stats['num_examples']}")
    chief = cluster.is_chief(tf_config)
    plan = distribute.plan_for(strategy, tf_config, train.batch_size, cfg.adam_learning_rate, train, "examples",
                               "[trainer]", optimizer="Adam learning rate")
    t0 = time.time()
    model, history = train_regressor(cfg, train, inputs, target, stats, backup_dir=job.backup_dir, strategy=strategy,
                                     plan=plan)
    train_seconds = time.time() - t0
    model = distribute.final_model(model, strategy, plan, fn_args.model_run_dir)  # FDS statistics included
    if not chief:  # one writer (TF's multi-worker rule); leave when the chief has exported
        replicas.barrier(strategy)
        return
    export_regressor(model, fn_args.serving_model_dir, cfg)
    model.save(os.path.join(fn_args.model_run_dir, "model.keras"))
    summary = {"train_seconds": train_seconds, "epochs": train.epochs, "history": history,
               "config": {"train": dataclasses.asdict(train), "regression": dataclasses.asdict(cfg)},
               "rows_per_second": len(target) * train.epochs / train_seconds if train_seconds else None,
               "distribute": plan.as_dict() if plan is not None else
               {"strategy": "none", "workers": 1, "replicas": 1, "mixed_precision": train.mixed_precision}}
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, TRAINING_SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)
    replicas.barrier(strategy)


def main(argv=None) -> int:
    """One worker: ``python -m models.regression JOB.json`` (models.cluster.launch): trains and, on the chief,
    exports."""
    return distribute.worker_main(argv, train_and_export, REGRESSION)

if __name__ == "__main__":
    sys.exit(main())
