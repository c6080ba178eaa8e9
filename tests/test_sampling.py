"""Re-sampling on tf.data: the probabilities against Kang et al.'s formula and the drawn frequencies."""

import numpy as np
import pytest
import tensorflow as tf

from models.sampling import class_probabilities_per_epoch, progressive_probabilities, resampled, sampling_probabilities

COUNTS = [2, 400, 40, 100]  # shuffled class order: class 1 is the head


def test_probabilities_by_formula():
    n = np.array(COUNTS, float)
    np.testing.assert_allclose(sampling_probabilities(COUNTS, 1.0), n / n.sum())
    np.testing.assert_allclose(sampling_probabilities(COUNTS, 0.0), [0.25] * 4)
    np.testing.assert_allclose(sampling_probabilities(COUNTS, 0.5), np.sqrt(n) / np.sqrt(n).sum())
    np.testing.assert_allclose(progressive_probabilities(COUNTS, 0, 5), n / n.sum())
    np.testing.assert_allclose(progressive_probabilities(COUNTS, 4, 5), [0.25] * 4)
    np.testing.assert_allclose(progressive_probabilities(COUNTS, 2, 5), 0.5 * n / n.sum() + 0.5 * 0.25)
    with pytest.raises(ValueError, match="unknown sampler"):
        class_probabilities_per_epoch("nope", COUNTS, 3)


def _dataset():
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(COUNTS)]).astype(np.int64)
    images = np.arange(len(labels), dtype=np.int64)  # the "image" is the example's index
    return tf.data.Dataset.from_tensor_slices((images, labels)).cache(), labels


@pytest.mark.parametrize("sampler", ["class_balanced", "sqrt", "instance"])
def test_drawn_class_frequencies_match(sampler):
    ds, _ = _dataset()
    draws = 8000
    labels = np.array([y for _, y in resampled(ds, COUNTS, sampler, 1, draws, seed=0).take(draws).as_numpy_iterator()])
    freq = np.bincount(labels, minlength=4) / draws
    expected = class_probabilities_per_epoch(sampler, COUNTS, 1)[0]
    tolerance = 4 * np.sqrt(expected * (1 - expected) / draws) + 1e-3  # four binomial standard deviations
    assert np.all(np.abs(freq - expected) <= tolerance), (freq, expected)


def test_progressive_moves_from_instance_to_class_balanced():
    ds, _ = _dataset()
    epoch_size, epochs = 4000, 3
    labels = np.array([y for _, y in resampled(ds, COUNTS, "progressive", epochs, epoch_size, seed=1)
                       .take(epochs * epoch_size).as_numpy_iterator()])
    for e in range(epochs):
        freq = np.bincount(labels[e * epoch_size:(e + 1) * epoch_size], minlength=4) / epoch_size
        np.testing.assert_allclose(freq, progressive_probabilities(COUNTS, e, epochs), atol=0.03)


def test_each_example_comes_from_its_own_class():
    ds, labels = _dataset()
    for image, label in resampled(ds, COUNTS, "class_balanced", 1, 500, seed=2).take(500).as_numpy_iterator():
        assert labels[image] == label
