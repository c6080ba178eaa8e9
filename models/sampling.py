"""Class-aware re-sampling on tf.data (Kang et al., "Decoupling Representation and Classifier", ICLR 2020).

The probability of drawing an example of class j is p_j = n_j^q / sum_i n_i^q (their Eq. 1):
q = 1 instance-balanced (the plain data order), q = 0 class-balanced, q = 1/2 square-root. The
progressively-balanced sampler moves from instance- to class-balanced over training:
p_j(t) = (1 - t/T) p_j^IB + (t/T) p_j^CB, t the epoch and T the number of epochs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

SAMPLER_Q = {"instance": 1.0, "class_balanced": 0.0, "sqrt": 0.5}
SAMPLERS = (*SAMPLER_Q, "progressive")


def sampling_probabilities(class_counts, q: float) -> np.ndarray:
    """p_j = n_j^q / sum_i n_i^q over the classes present (absent classes get 0)."""
    counts = np.asarray(class_counts, np.float64)
    raw = np.where(counts > 0, np.power(np.maximum(counts, 1e-12), q), 0.0)
    return raw / raw.sum()


def progressive_probabilities(class_counts, epoch: int, total_epochs: int) -> np.ndarray:
    t = epoch / max(total_epochs - 1, 1)
    return (1 - t) * sampling_probabilities(class_counts, 1.0) + t * sampling_probabilities(class_counts, 0.0)


def class_probabilities_per_epoch(sampler: str, class_counts, epochs: int) -> np.ndarray:
    """(epochs, C) class-drawing probabilities of ``sampler`` for every epoch."""
    if sampler == "progressive":
        return np.stack([progressive_probabilities(class_counts, e, epochs) for e in range(epochs)])
    if sampler not in SAMPLER_Q:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    return np.tile(sampling_probabilities(class_counts, SAMPLER_Q[sampler]), (epochs, 1))


def resampled(dataset: tf.data.Dataset, class_counts, sampler: str, epochs: int, epoch_size: int, seed: int,
              first_epoch: int = 0) -> tf.data.Dataset:
    """An endless (image, label) stream drawn class by class with the sampler's per-epoch probabilities.

    ``dataset`` yields (image, label) or (image, label, sample weight) and should be cached; each class
    is its own shuffled, repeated stream, and ``tf.data.Dataset.sample_from_datasets`` picks the class of every element from a
    weight vector that changes with the epoch (element index // epoch_size).
    """
    probs = class_probabilities_per_epoch(sampler, class_counts, epochs).astype(np.float32)
    present = [c for c, n in enumerate(class_counts) if n > 0]
    streams = [dataset.filter(lambda x, y, *weight, c=c: tf.equal(y, c)).shuffle(int(class_counts[c]), seed=seed + c,
                                                                      reshuffle_each_iteration=True).repeat()
               for c in present]
    table = tf.constant(probs[:, present])
    weights = tf.data.Dataset.range(first_epoch * epoch_size, epochs * epoch_size).map(
        lambda i: table[tf.minimum(i // epoch_size, epochs - 1)])
    return tf.data.Dataset.sample_from_datasets(streams, weights=weights.repeat(), seed=seed,
                                                stop_on_empty_dataset=False)
