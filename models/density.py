"""Label-density statistics of a continuous target: bins, LDS-smoothed density, weights, bin groups.

Label Distribution Smoothing (LDS; Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021):
the empirical label density of a continuous target is a poor proxy for the effective one, because
neighbouring target values share information. LDS convolves the per-bin value (the count, or its
square root) with a symmetric kernel k,

    p~(b) = sum_j k(b - j) * p(j),

and re-weights the loss of an example in bin b by 1 / p~(b), scaled so the weights average 1 over
the training examples. Pure NumPy / SciPy (``scipy.ndimage``, ``scipy.signal.windows``), as the
paper's code; LabelStatsGen (components/) builds the histogram with Beam and calls
:func:`derive_regression_stats`.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve1d, gaussian_filter1d
from scipy.signal.windows import triang

KERNELS = ("gaussian", "triang", "laplace")
REWEIGHTS = ("none", "sqrt_inv", "inverse")
BIN_GROUPS = ("many", "medium", "few")


def _raw_window(kernel: str, ks: int, sigma: float) -> np.ndarray:
    """The un-normalised kernel of size ``ks`` (odd) centred on the middle element."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
    if ks < 1 or ks % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd number, got {ks}")
    half = (ks - 1) // 2
    if kernel == "gaussian":  # a unit impulse blurred by scipy's gaussian filter (its default reflect mode)
        impulse = np.zeros(ks)
        impulse[half] = 1.0
        return gaussian_filter1d(impulse, sigma=sigma)
    if kernel == "triang":
        return triang(ks)
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    return np.exp(-np.abs(offsets) / sigma) / (2.0 * sigma)


def lds_kernel_window(kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0) -> np.ndarray:
    """LDS window: the kernel of size ``ks`` divided by its maximum (the centre weighs 1).

    Example: ``lds_kernel_window('triang', 5, 2.0)`` is ``[1/3, 2/3, 1, 2/3, 1/3]``.
    """
    window = _raw_window(kernel, ks, sigma)
    return window / window.max()


def lds_weights(bin_counts, reweight: str = "sqrt_inv", lds: bool = True, kernel: str = "gaussian", ks: int = 5,
                sigma: float = 2.0) -> np.ndarray:
    """One loss weight per bin, from the training examples' per-bin counts n_b.

    value_b = sqrt(n_b) ('sqrt_inv') or clip(n_b, 5, 1000) ('inverse'); with ``lds`` the values are
    convolved with :func:`lds_kernel_window` (zeros beyond both ends); w_b = 1 / value_b, scaled so
    sum_b n_b w_b = sum_b n_b (the mean weight over the training examples is 1). 'none' gives ones.
    A bin whose value is 0 (no example in or near it) gets weight 0: no training example carries it.
    """
    if reweight not in REWEIGHTS:
        raise ValueError(f"unknown reweight {reweight!r}; choose one of {REWEIGHTS}")
    counts = np.asarray(bin_counts, np.float64)
    if reweight == "none":
        if lds:
            raise ValueError("LDS smooths the re-weighting values: set reweight to 'sqrt_inv' or 'inverse' with lds")
        return np.ones_like(counts)
    value = np.sqrt(counts) if reweight == "sqrt_inv" else np.clip(counts, 5, 1000)
    if lds:
        value = convolve1d(value, weights=lds_kernel_window(kernel, ks, sigma), mode="constant")
    weights = np.where(value > 0, 1.0 / np.where(value > 0, value, 1.0), 0.0)
    total = counts.sum()
    if total <= 0:
        raise ValueError("no training examples in any bin")
    return weights * (total / float((counts * weights).sum()))


def bin_index(values, bin_width: float, num_bins: int) -> np.ndarray:
    """Bin of each target value: floor(y / width), the last bin open-ended (it holds everything above)."""
    values = np.asarray(values, np.float64)
    return np.clip(np.floor(values / bin_width), 0, num_bins - 1).astype(np.int64)


def bin_groups(bin_counts, many_above: float = 100, few_below: float = 20) -> list[str]:
    """Group of each bin by its training count, as the paper: many (> 100), few (< 20, empty bins
    included), medium (the rest)."""
    return ["many" if n > many_above else "few" if n < few_below else "medium" for n in bin_counts]


def derive_regression_stats(histogram: dict, bin_width: float = 1.0, num_bins: int | None = None, reweight: str = "sqrt_inv",
                            lds: bool = True, kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0,
                            many_above: float = 100, few_below: float = 20) -> dict:
    """Everything the regression Trainer and gate read, from ``histogram`` {floor(y / width): count}.

    ``num_bins`` None: just enough bins to hold the largest training target; values at or above
    (num_bins - 1) * width fall into the last, open-ended bin.
    """
    if bin_width <= 0:
        raise ValueError(f"bin width must be positive, got {bin_width}")
    hist = {int(k): int(v) for k, v in histogram.items()}
    if not hist or sum(hist.values()) == 0:
        raise ValueError("no training examples with a valid target")
    if min(hist) < 0:
        raise ValueError(f"negative bin {min(hist)}: targets must be >= 0")
    if num_bins is None:
        num_bins = max(hist) + 1
    counts = np.zeros(num_bins, np.int64)
    for b, n in hist.items():
        counts[min(b, num_bins - 1)] += n
    density = counts / counts.sum()
    smoothed = convolve1d(density, weights=lds_kernel_window(kernel, ks, sigma), mode="constant")
    weights = lds_weights(counts, reweight, lds, kernel, ks, sigma)
    groups = bin_groups(counts, many_above, few_below)
    return {
        "task": "regression",
        "num_examples": int(counts.sum()),
        "bin_width": float(bin_width),
        "num_bins": int(num_bins),
        "last_bin_from": float((num_bins - 1) * bin_width),  # the last bin is [this, inf)
        "bin_counts": counts.tolist(),
        "density": density.tolist(),
        "lds_density": (smoothed / smoothed.sum()).tolist(),  # the kernel-smoothed density, for the report
        "reweight": reweight,
        "lds": {"enabled": bool(lds), "kernel": kernel, "ks": int(ks), "sigma": float(sigma)},
        "bin_weights": weights.tolist(),
        "bin_groups": groups,
        "group_thresholds": {"many_above": many_above, "few_below": few_below},
        "group_bins": {g: sum(1 for x in groups if x == g) for g in BIN_GROUPS},
        "group_examples": {g: int(sum(n for n, x in zip(counts, groups) if x == g)) for g in BIN_GROUPS},
    }
