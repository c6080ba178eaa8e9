"""What the replicas of a data-parallel training share (models/distribute.py's strategies): BatchNorm's statistics
averaged at an epoch's end, every replica's rows gathered or summed inside a step (a no-op in one process and on
every Keras backend but TensorFlow's strategies), sums over a strategy's replicas outside a step, and a barrier.

models/ never imports tfx.
"""

from __future__ import annotations

import numpy as np


def statistics_sync(strategy, variables):
    """A function that sets ``variables`` on every replica to their mean across the replicas (a no-op with one
    replica or none): each replica's BatchNorm moving statistics are its own (Keras 3 variables aggregate "none", and
    the layer normalises by its local batch, as PyTorch's DDP without SyncBatchNorm); averaged at each epoch's end,
    every worker holds the same model, and the backup and the export are one model. Float variables only."""
    import tensorflow as tf

    variables = list(variables)

    @tf.function
    def mean_across_replicas():
        def replica():
            return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN,
                                                                   [tf.identity(v.value) for v in variables])
        return strategy.run(replica)

    def sync():
        if not variables or strategy.num_replicas_in_sync == 1:
            return
        means = mean_across_replicas()
        for v, mean in zip(variables, means):
            v.assign(strategy.experimental_local_results(mean)[0])

    return sync


# -------------------------------------------------------------------- inside a replica (strategy.run)


def _replica_context():
    """The replica context of a ``strategy.run`` with more than one replica in sync; None elsewhere (one process, the
    default strategy, a strategy's cross-replica context, the JAX backend), where the helpers below are no-ops."""
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def replicated() -> bool:
    """Whether this code runs in one of several replicas in sync (inside ``strategy.run``)."""
    return _replica_context() is not None


def gather_replicas(x):
    """Every replica's ``x`` concatenated along axis 0, in replica order (``all_gather``; MoCo's ``concat_all_gather``):
    the global batch, as one process fed the replicas' batches one after the other would see it; ``x`` itself
    outside several replicas (one process, any Keras backend)."""
    import tensorflow as tf

    context = _replica_context()
    # tf.identity: under MultiWorkerMirroredStrategy all_gather of a strategy.run input (a batch's labels) raised
    # "ValueError: destinations can not be empty" (an input has no device); of its identity it gathered (measured,
    # TF 2.21, two localhost workers)
    if context is None:
        return x
    gathered = context.all_gather(tf.identity(x), axis=0)  # its first dimension unknown, even for static batches
    if x.shape[0] is None:
        return gathered
    # every replica's batch is the same size (drop_remainder batches); checked when the step runs
    return tf.ensure_shape(gathered, [context.num_replicas_in_sync * x.shape[0], *x.shape[1:]])


def sum_replicas(x):
    """``x`` summed over the replicas (``all_reduce`` SUM); ``x`` itself outside several replicas."""
    import tensorflow as tf

    context = _replica_context()
    return x if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(x))


def replica_sums(strategy, fn, *arrays):
    """``fn(*shares, all_reduce)`` in every replica, each replica's shares its part of this worker's ``arrays`` (split
    by rows, in order, among the worker's local replicas); ``all_reduce`` sums a list of tensors over every replica of
    the cluster (SUM). Returns fn's outputs as the first local replica holds them: when fn returns only all-reduced
    values, the same on every replica and worker, ready to be assigned in the cross-replica context. Without a
    strategy: ``fn(*arrays, None)``.

    Measured (Keras 3.15, TF 2.21, MirroredStrategy on 2 logical CPUs): a Keras non-trainable variable created under
    the scope is a MirroredVariable with aggregation NONE, synchronization ON_WRITE; ``assign`` in a replica context
    writes that replica's copy only (replicas assigning 1 and 2 keep 1 and 2: the copies diverge, silently), while an
    ``assign`` in the cross-replica context writes every copy. Hence: sum in the replicas, assign outside them."""
    import tensorflow as tf

    if strategy is None:
        return fn(*arrays, None)
    local = len(strategy.extended.worker_devices)

    def per_replica(array):
        parts = np.array_split(np.asarray(array), local)
        return strategy.experimental_distribute_values_from_function(
            lambda context: parts[context.replica_id_in_sync_group % local])

    def replica(*shares):
        context = tf.distribute.get_replica_context()
        return fn(*shares, lambda tensors: context.all_reduce(tf.distribute.ReduceOp.SUM, tensors))

    out = tf.function(lambda *values: strategy.run(replica, args=values))(*[per_replica(a) for a in arrays])
    return tf.nest.map_structure(lambda t: strategy.experimental_local_results(t)[0], out)


def barrier(strategy) -> None:
    """Every worker waits here until all have arrived (one all-reduce): a worker that left while the chief still
    exports would be reported to the chief's coordination service as crashed ("tasks are unhealthy")."""
    import tensorflow as tf

    if strategy is None or strategy.num_replicas_in_sync == 1:
        return

    @tf.function
    def meet():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.constant(1.0)))

    meet()
