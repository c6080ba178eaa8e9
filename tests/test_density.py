"""LDS windows, per-bin weights, bins and bin groups against hand-computed values."""

import numpy as np
import pytest

from models.density import bin_groups, bin_index, derive_regression_stats, lds_kernel_window, lds_weights


def test_triang_and_laplace_windows_are_normalised_by_their_maximum():
    np.testing.assert_allclose(lds_kernel_window("triang", 5, 2.0), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    e = np.exp
    np.testing.assert_allclose(lds_kernel_window("laplace", 5, 2.0), [e(-1), e(-0.5), 1, e(-0.5), e(-1)])


def test_gaussian_window_is_a_reflect_blurred_impulse():
    sigma, radius = 2.0, 8  # scipy truncates the gaussian at 4 sigma
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma**2))
    taps /= taps.sum()
    impulse = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
    padded = np.pad(impulse, radius, mode="symmetric")  # scipy's 'reflect' boundary: d c b a | a b c d
    blurred = np.array([np.dot(taps, padded[i:i + 2 * radius + 1]) for i in range(5)])
    np.testing.assert_allclose(lds_kernel_window("gaussian", 5, 2.0), blurred / blurred.max(), rtol=1e-12)
    assert lds_kernel_window("gaussian", 5, 2.0)[2] == 1.0


def test_sqrt_inverse_weights_without_lds():
    counts = [4, 0, 16, 9]
    w = lds_weights(counts, "sqrt_inv", lds=False)
    np.testing.assert_allclose(w, np.array([1 / 2, 0, 1 / 4, 1 / 3]) * 29 / 9)
    assert np.dot(counts, w) / sum(counts) == pytest.approx(1.0)  # mean weight over the examples


def test_sqrt_inverse_weights_with_lds_triang_window():
    counts = [4, 0, 16, 9]
    # values [2, 0, 4, 3] convolved with [0.5, 1, 0.5], zeros outside: [2, 3, 5.5, 5]
    w = lds_weights(counts, "sqrt_inv", lds=True, kernel="triang", ks=3)
    raw = 1 / np.array([2, 3, 5.5, 5])
    np.testing.assert_allclose(w, raw * 29 / np.dot(counts, raw))
    assert w[1] > 0  # an empty bin between populated ones gets the smoothed weight


def test_inverse_weights_clip_counts_to_5_and_1000():
    counts = [1, 2000, 50]
    w = lds_weights(counts, "inverse", lds=False)
    np.testing.assert_allclose(w, np.array([1 / 5, 1 / 1000, 1 / 50]) * 2051 / 3.2)


def test_reweight_none_gives_ones_and_refuses_lds():
    np.testing.assert_array_equal(lds_weights([3, 4], "none", lds=False), [1, 1])
    with pytest.raises(ValueError, match="sqrt_inv"):
        lds_weights([3, 4], "none", lds=True)
    with pytest.raises(ValueError, match="odd"):
        lds_kernel_window("gaussian", 4, 1.0)


def test_bins_last_open_ended_and_groups_by_training_count():
    np.testing.assert_array_equal(bin_index([0.0, 0.99, 1.0, 7.5, 700.0], 1.0, 5), [0, 0, 1, 4, 4])
    np.testing.assert_array_equal(bin_index([2.4, 2.6], 0.5, 10), [4, 5])
    assert bin_groups([101, 100, 20, 19, 0]) == ["many", "medium", "medium", "few", "few"]


def test_derive_regression_stats_from_a_histogram():
    stats = derive_regression_stats({0: 150, 1: 50, 3: 5, 9: 1}, bin_width=1.0, num_bins=5, lds=False)
    assert stats["bin_counts"] == [150, 50, 0, 5, 1]  # bin 9 folded into the open-ended last bin
    assert stats["bin_groups"] == ["many", "medium", "few", "few", "few"]
    assert stats["group_examples"] == {"many": 150, "medium": 50, "few": 6}
    assert stats["num_examples"] == 206 and stats["last_bin_from"] == 4.0
    assert np.dot(stats["bin_counts"], stats["bin_weights"]) == pytest.approx(206)
    assert derive_regression_stats({0: 1, 6: 2})["num_bins"] == 7
