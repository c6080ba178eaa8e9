"""Training beyond one process (``train.distribute``): the strategy and the data-parallel loop (the cluster and its
worker processes: models/cluster.py; mixed precision: models/precision.py).

- ``none``: one process, one device, Keras' own ``model.fit`` (models/training.py).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over this host's devices (several GPUs), in the Trainer's process.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the workers ``TF_CONFIG`` names, as
  Kubeflow's training operator (TFJob) and Vertex AI set it; ``train.local_workers=N`` makes the Trainer start N
  workers on localhost itself (a cluster of one host, for tests and benchmarks).
- ``auto``: multi_worker when TF_CONFIG names several workers or train.local_workers > 1, mirrored when this host
  has several GPUs, else none.

Keras 3's ``model.fit`` under MultiWorkerMirroredStrategy fails before the first step (Keras' TF trainer reduces a
PerReplica batch with ``strategy.reduce("MEAN")``: "Invalid reduction dimension 0 for input with 0 dimensions",
tensorflow/tensorflow#72388, keras-team/keras#20585), so every strategy trains with :func:`fit`, a custom loop as
TF's own custom-training-loop guide writes it: the model and optimizer built under the strategy's scope, the data
from ``distribute_datasets_from_function``, ``strategy.run`` per step, each replica's loss divided by the global
batch's size (or class-weight sum), gradients summed across replicas by the Keras optimizer.

Workers always train in fresh child processes (models/cluster.py says why).

models/ never imports tfx.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import types

import numpy as np

from models import cluster, modes, precision, replicas  # modes: pure Python, which modes train data-parallel
from models.job import TrainerJob

DISTRIBUTE = ("none", "mirrored", "multi_worker", "auto")
LR_SCALING = ("none", "linear", "sqrt")
BATCH_SCALING = ("global", "per_replica")
DATA_SHARDING = ("auto", "examples", "seeds")


def resolve(setting: str, local_workers: int = 1, tf_config: dict | None = None, gpus: int = 0,
            cluster_launch: bool = False) -> str:
    """train.distribute as the strategy to use: none, mirrored or multi_worker (auto resolved). ``cluster_launch``: the
    job can start its own cluster (a Kubeflow package's TFJob, models.cluster.launch_on_cluster), so multi_worker needs no
    TF_CONFIG here."""
    setting = str(setting).strip().lower()
    if setting not in DISTRIBUTE:
        raise ValueError(f"train.distribute={setting!r}: choose one of {list(DISTRIBUTE)}")
    if int(local_workers) < 1:
        raise ValueError(f"train.local_workers={local_workers}: needs at least 1 worker")
    tf_config = tf_config or {}
    workers = cluster.cluster_workers(tf_config)
    if tf_config and int(local_workers) > 1:
        raise ValueError(f"train.local_workers={local_workers} starts its own cluster, but TF_CONFIG already names "
                         f"{workers} worker(s); unset one of the two")
    if setting == "auto":
        if workers > 1 or int(local_workers) > 1:
            return "multi_worker"
        return "mirrored" if gpus > 1 else "none"
    if setting == "multi_worker" and workers < 1 and int(local_workers) < 2 and not cluster_launch:
        raise ValueError("train.distribute=multi_worker needs a cluster: TF_CONFIG (set by Kubeflow's TFJob or "
                         "Vertex AI) or train.local_workers >= 2; neither is set")
    if setting != "multi_worker" and int(local_workers) > 1:
        raise ValueError(f"train.local_workers={local_workers} needs train.distribute=multi_worker or auto, "
                         f"got {setting}")
    return setting


def data_parallel_modes() -> list[str]:
    return sorted(m.name for m in modes.MODES.values() if m.data_parallel)


def check_config(train, mode: str, task: str = "classification") -> None:
    """The distribute / mixed precision settings, checked when the run is configured (not when the Trainer starts):
    each value known, and anything beyond one float32 process only where it is built: the classification Trainers
    of the modes marked ``data_parallel`` (models/modes.py: supervised, pseudo_label and auto, i.e. the pseudo-label
    base and final Trainers; fixmatch and daso, models.semi.fit_distributed, with every loss, class weighting, DRW,
    sampler and decoupling stage), and the SSP pre-training Trainer (pretrain.method=rotation|moco, models/ssp.py)
    ahead of them, which takes the same train.* settings (models.config.DistributeConfig). The regression Trainer
    (task=regression, with LDS and FDS: models/regression.py) too."""
    # multi_worker's cluster (TF_CONFIG) exists only in the training pods, so it is not required here
    resolve(train.distribute if train.distribute != "multi_worker" or train.local_workers > 1 else "none",
            train.local_workers)
    batch_and_lr(train.batch_size, train.learning_rate, 1, train.batch_scaling, train.lr_scaling)
    # the name only: examples with a class-aware sampler is refused where a strategy uses it (one process never does)
    data_sharding_for(train.data_sharding, train.sampler if train.data_sharding != "examples" else "instance")
    if train.mixed_precision not in precision.MIXED_PRECISION_SETTINGS:
        raise ValueError(f"train.mixed_precision={train.mixed_precision!r}: choose one of "
                         f"{list(precision.MIXED_PRECISION_SETTINGS)}")
    asked = [f"train.{k}={getattr(train, k)}" for k, plain in (("distribute", "none"), ("local_workers", 1),
                                                              ("mixed_precision", "none"))
             if getattr(train, k) != plain and not (k in ("distribute", "mixed_precision") and getattr(train, k) == "auto")]
    if asked and task != "regression" and (task != "classification" or not modes.get(mode).data_parallel):
        usable = "|".join(data_parallel_modes())
        keep = f"leave {', '.join(a.split('=')[0] for a in asked)} at its default"
        built = (f"training beyond one float32 process is built for the classification Trainers of semi.method={usable} "
                 "and for task=regression")
        if task != "classification":
            raise ValueError(f"{', '.join(asked)}: {built}; task={task} trains in one process: {keep}")
        raise ValueError(f"{', '.join(asked)}: {built}; semi.method={mode} trains in one process. Set "
                         f"semi.method={usable} or {keep}")


def make_strategy(kind: str):
    """The tf.distribute strategy for a resolved kind (None for none). Multi-worker: ring all-reduce on CPU
    (NCCL needs GPUs; AUTO picks it there)."""
    import tensorflow as tf

    if kind == "none":
        return None
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        gpus = tf.config.list_physical_devices("GPU")
        implementation = (tf.distribute.experimental.CommunicationImplementation.AUTO if gpus
                          else tf.distribute.experimental.CommunicationImplementation.RING)
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation))
    raise ValueError(f"unresolved train.distribute={kind!r}")


# ------------------------------------------------------------------------------------------ the plan


@dataclasses.dataclass
class Plan:
    """What a distributed training uses, recorded in training_summary.json's ``distribute`` block."""

    strategy: str
    workers: int
    replicas: int
    worker_index: int
    chief: bool
    global_batch_size: int
    per_replica_batch_size: int
    batch_scaling: str
    learning_rate: float
    lr_scaling: str
    data_sharding: str
    mixed_precision: str
    local_workers: int = 1

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_for(strategy, tf_config: dict, batch_size: int, learning_rate: float, how, data_sharding: str,
             label: str, optimizer: str = "learning rate") -> Plan | None:
    """A data-parallel training's Plan (None without a strategy), said on stderr: the global and per-replica batch
    and learning rate under ``how``'s batch_scaling / lr_scaling (a TrainConfig or a DistributeConfig), this
    worker's place in the cluster and ``data_sharding`` (resolved). Every Trainer's, the one place it is made."""
    if strategy is None:
        return None
    import tensorflow as tf

    n = strategy.num_replicas_in_sync
    global_batch, per_replica, lr = batch_and_lr(batch_size, learning_rate, n, how.batch_scaling, how.lr_scaling)
    plan = Plan(strategy=("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                          else type(strategy).__name__), workers=max(cluster.cluster_workers(tf_config), 1),
                replicas=n, worker_index=cluster.worker_index(tf_config), chief=cluster.is_chief(tf_config),
                global_batch_size=global_batch, per_replica_batch_size=per_replica, batch_scaling=how.batch_scaling,
                learning_rate=lr, lr_scaling=how.lr_scaling, data_sharding=data_sharding,
                mixed_precision=how.mixed_precision, local_workers=how.local_workers)
    print(f"{label} {plan.strategy}: worker {plan.worker_index} of {plan.workers}, {n} replica(s), global batch "
          f"{global_batch} ({per_replica} a replica), {optimizer} {lr:g}, data sharding {data_sharding}",
          file=sys.stderr, flush=True)
    return plan


def batch_and_lr(batch_size: int, learning_rate: float, replicas: int, batch_scaling: str = "global",
                 lr_scaling: str = "none") -> tuple[int, int, float]:
    """(global batch, per-replica batch, learning rate).

    batch_scaling=global: train.batch_size is the global batch, split across replicas (it must divide); the
    run is the single-process run's. per_replica: every replica takes train.batch_size, the global batch grows
    with the replicas, and lr_scaling (linear: Goyal et al. 2017; sqrt) scales the rate by global / batch_size.
    """
    if batch_scaling not in BATCH_SCALING:
        raise ValueError(f"train.batch_scaling={batch_scaling!r}: choose one of {list(BATCH_SCALING)}")
    if lr_scaling not in LR_SCALING:
        raise ValueError(f"train.lr_scaling={lr_scaling!r}: choose one of {list(LR_SCALING)}")
    if batch_scaling == "global":
        if batch_size % replicas:
            raise ValueError(f"train.batch_size={batch_size} (the global batch) does not split across {replicas} "
                             f"replicas; choose a multiple of {replicas} or train.batch_scaling=per_replica")
        global_batch, per_replica = batch_size, batch_size // replicas
    else:
        global_batch, per_replica = batch_size * replicas, batch_size
    factor = global_batch / batch_size
    lr = learning_rate * {"none": 1.0, "linear": factor, "sqrt": math.sqrt(factor)}[lr_scaling]
    return global_batch, per_replica, lr


def data_sharding_for(setting: str, sampler: str) -> str:
    """examples: worker i of n reads every n-th example (each epoch sees the data once across workers);
    seeds: every worker reads all examples in its own order (worker seed = seed + index). auto: examples for
    the instance sampler; seeds for the class-aware samplers, whose per-class streams need the class counts
    of what they read (a shard's counts would have to be recounted)."""
    if setting not in DATA_SHARDING:
        raise ValueError(f"train.data_sharding={setting!r}: choose one of {list(DATA_SHARDING)}")
    if setting == "auto":
        return "examples" if sampler == "instance" else "seeds"
    if setting == "examples" and sampler != "instance":
        raise ValueError(f"train.data_sharding=examples with train.sampler={sampler}: the class-aware sampler draws "
                         "from every class's full count; use data_sharding=seeds (or auto)")
    return setting


# ------------------------------------------------------------------------------------------ the loop


def fit(strategy, model, optimizer, loss, dataset_fn, epochs: int, steps: int, first_epoch: int = 0,
        class_weights=None, weights_in_loss: bool = False, progress=None, backup=None) -> list:
    """Data-parallel training with a custom loop; returns the per-epoch history.

    ``loss``: a Keras loss whose ``call`` gives per-example terms; ``class_weights`` (C,) weight example i by
    w_{y_i} and the replica's loss is sum_i w_i s_i l_i / sum over the global batch of w_i (the single-process
    weighted mean, s the sample weights); ``weights_in_loss`` (the focal loss, which puts w inside its power):
    the loss already weights, and the mean is over the global batch's examples. ``dataset_fn(input_context)``
    builds a replica's batches. ``backup``: a :class:`Backup` written after each epoch (the chief writes it).
    """
    import keras
    import tensorflow as tf

    cw = None if class_weights is None or weights_in_loss else tf.constant(np.asarray(class_weights, np.float32))
    scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    data = iter(strategy.distribute_datasets_from_function(dataset_fn))

    def replica_step(batch):
        x, y, *rest = batch
        y = tf.reshape(tf.cast(y, tf.int32), [-1])
        s = tf.reshape(tf.cast(rest[0], tf.float32), [-1]) if rest else tf.ones_like(y, tf.float32)
        w = tf.gather(cw, y) if cw is not None else tf.ones_like(y, tf.float32)
        context = tf.distribute.get_replica_context()
        denominator = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(w))
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            terms = tf.cast(loss.call(y, logits), tf.float32)
            value = tf.reduce_sum(terms * w * s) / tf.maximum(denominator, 1e-12)
            scaled = optimizer.scale_loss(value) if scaling else value
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), y), tf.float32))
        return {"loss": value, "correct": correct, "count": tf.cast(tf.size(y), tf.float32)}

    sync_statistics = replicas.statistics_sync(strategy, [v for v in model.non_trainable_variables if v.trainable is False])
    return run_epochs(global_step(strategy, replica_step), data, steps, first_epoch, epochs, accuracy_and_loss,
                      model=model, optimizer=optimizer, sync_statistics=sync_statistics, progress=progress, backup=backup)


def global_step(strategy, replica_step, mean=()):
    """The replica-step skeleton every data-parallel Trainer trains with: a tf.function that runs
    ``replica_step(batch)`` (the Trainer's own step: forward, its loss as its share of the global batch's, the
    optimizer's update) on every replica, each on its share of a distributed global batch, and returns what it
    returns (a dict of scalars) summed over the replicas; keys in ``mean`` are averaged instead."""
    import tensorflow as tf

    @tf.function
    def step(batch):
        out = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN if k in mean else tf.distribute.ReduceOp.SUM, v,
                                   axis=None) for k, v in out.items()}

    return step


def accuracy_and_loss(totals: dict, steps: int) -> dict:
    """An epoch's {accuracy, loss} from the sums of its steps' {loss, correct, count} (:func:`fit`, models.ssp)."""
    return {"accuracy": totals["correct"] / max(totals["count"], 1.0), "loss": totals["loss"] / max(steps, 1)}


def run_epochs(train_step, data, steps: int, first_epoch: int, epochs: int, summarize, model=None, optimizer=None,
               sync_statistics=None, before_epoch=None, after_epoch=None, progress=None, backup=None) -> list:
    """The one epoch loop of every data-parallel Trainer (:func:`fit`, models.ssp.fit_pretext,
    models.semi.fit_distributed, models.regression.train_distributed): per epoch ``before_epoch(epoch)``, ``steps``
    calls of ``train_step(next(data))`` (:func:`global_step`; ``data`` a distributed dataset's iterator) with each
    output summed over them, the BatchNorm statistics averaged across replicas (``sync_statistics()``),
    ``after_epoch(epoch)`` (FDS's statistics), the history entry {epoch, seconds, **summarize(sums, steps)} given to
    ``progress``, ``backup`` written. Returns the history."""
    history = []
    for epoch in range(first_epoch, epochs):
        t0 = time.time()
        if before_epoch is not None:
            before_epoch(epoch)
        totals = {}
        for _ in range(steps):
            for k, v in train_step(next(data)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        if sync_statistics is not None:
            sync_statistics()
        if after_epoch is not None:
            after_epoch(epoch)
        entry = {"epoch": epoch + 1, "seconds": time.time() - t0, **summarize(totals, steps)}
        history.append(entry)
        if progress is not None:
            progress(entry)
        if backup is not None:
            backup.save(model, optimizer, epoch + 1)
    return history


def run_or_launch(fn_args, stage: str, setting: str, local_workers: int, module: str, run_here, label: str) -> None:
    """A Trainer's run_fn past its job (models.regression, models.ssp): ``setting`` (train.distribute) resolves as
    the classification Trainer's; multi_worker trains in fresh worker processes (``python -m <module> JOB``, started
    here for ``local_workers`` > 1, else this process's own task of the TF_CONFIG cluster), since a multi-worker
    strategy must come before any TensorFlow op, each reading the fn_args and the job of ``stage`` as JSON
    (models.cluster.worker_fn_args); none and mirrored call ``run_here(strategy, tf_config)``."""
    import tensorflow as tf

    tf_config = cluster.read_tf_config()
    kind = resolve(setting, local_workers, tf_config, gpus=len(tf.config.list_physical_devices("GPU")),
                   cluster_launch=cluster.cluster_launch_of(fn_args) is not None)
    if kind == "multi_worker":
        job = {"fn_args": cluster.worker_fn_args(fn_args, stage)}
        cluster.launch_workers(fn_args, local_workers, tf_config, module, job, label)
        return
    run_here(make_strategy(kind), tf_config)


def worker_main(argv, train_and_export, stage: str) -> int:
    """One worker process started by :func:`launch` (``python -m <module> JOB.json``, TF_CONFIG set): the
    multi-worker strategy is created before any TensorFlow op runs, then ``train_and_export(fn_args, job, strategy,
    tf_config)`` runs the module's training (and, on the chief, its export); ``stage``: the job's models.job stage."""
    argv = sys.argv[1:] if argv is None else argv
    job = cluster.read_job(argv[0])
    tf_config = cluster.read_tf_config()
    strategy = make_strategy("multi_worker")
    fn_args = types.SimpleNamespace(**job["fn_args"])
    train_and_export(fn_args, TrainerJob.from_custom_config(fn_args.custom_config, stage), strategy, tf_config)
    return 0


def final_model(model, strategy, plan, model_run_dir: str):
    """The model a Trainer exports: a float32 copy (models.precision: the model itself when it computes in float32
    outside a strategy); under a strategy every worker also writes its final weights to its scratch folder
    (<model_run_dir>/distributed/worker-<i>/final.weights.npz: the replicas' equality is checkable). Then the chief
    exports and the others wait at :func:`barrier`."""
    model = precision.float32_copy(model) if strategy is None else precision.plain_copy(model)
    if strategy is not None:
        scratch = os.path.join(model_run_dir, cluster.WORKER_DIR, f"worker-{plan.worker_index}")
        os.makedirs(scratch, exist_ok=True)
        np.savez(os.path.join(scratch, "final.weights.npz"), *model.get_weights())
    return model
