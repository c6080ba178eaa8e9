"""The long-tailed profile and the split plan."""

from decimal import Decimal, getcontext

import numpy as np
import pytest

from components.data.errors import DataError
from components.data.longtail import SplitSpec, exponential_profile, plan_splits


def exact_profile(n_max, num_classes, rho, order):
    """floor(n_max * rho^(-r/(C-1))) in 50-digit decimal arithmetic, the formula's exact value."""
    getcontext().prec = 50
    counts = [0] * num_classes
    for rank, c in enumerate(order):
        value = Decimal(n_max) * Decimal(rho) ** (Decimal(-rank) / Decimal(num_classes - 1))
        counts[c] = int(value.to_integral_value(rounding="ROUND_FLOOR"))
    return counts


@pytest.mark.parametrize("n_max,rho", [(6000, 100), (5000, 100), (5000, 10), (4000, 50), (500, 100), (1000, 1)])
def test_profile_matches_formula_exactly(n_max, rho):
    order = [int(c) for c in np.random.default_rng(7).permutation(10)]
    assert exponential_profile(n_max, 10, rho, order) == exact_profile(n_max, 10, rho, order)


def test_profile_known_values_and_shuffled_order():
    # The counts the reference measurement uses (DESIGN.md): 14,886 images at rho=100.
    head_first = [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert exponential_profile(6000, 10, 100) == head_first
    assert sum(head_first) == 14886
    order = [3, 9, 0, 7, 1, 8, 2, 6, 4, 5]
    counts = exponential_profile(6000, 10, 100, order)
    assert [counts[c] for c in order] == head_first
    assert counts[3] == 6000 and counts[5] == 60


def test_profile_rejects_bad_settings():
    with pytest.raises(ValueError):
        exponential_profile(100, 10, 0.5)
    with pytest.raises(ValueError):
        exponential_profile(100, 3, 10, [0, 0, 1])


def _labels(per_class=600, num_classes=10, seed=0):
    y = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(y)


def test_plan_is_disjoint_and_follows_the_profiles():
    labels = _labels()
    spec = SplitSpec(rho=10, n_max=400, class_order="shuffle", val_per_class=50, rho_u=1.0, seed=3)
    plan = plan_splits(labels, 10, spec)
    parts = [plan.labeled, plan.unlabeled, plan.validation]
    union = np.concatenate(parts)
    assert len(np.unique(union)) == len(union), "splits overlap"
    assert np.bincount(labels[plan.validation], minlength=10).tolist() == [50] * 10
    assert np.bincount(labels[plan.labeled], minlength=10).tolist() == exponential_profile(400, 10, 10, plan.class_order)
    assert plan.class_order != list(range(10))  # shuffled, seeded
    # Balanced pool as large as fits: the head class has 600 - 50 - 400 = 150 left.
    assert np.bincount(labels[plan.unlabeled], minlength=10).tolist() == [150] * 10


def test_plan_unlabeled_profile_and_cap():
    labels = _labels()
    spec = SplitSpec(rho=10, n_max=300, val_per_class=50, rho_u=10, unlabeled_order="reversed", unlabeled_size=900)
    plan = plan_splits(labels, 10, spec)
    counts = np.bincount(labels[plan.unlabeled], minlength=10)
    assert counts.sum() <= 900
    assert counts.tolist() == exponential_profile(int(counts.max()), 10, 10, plan.unlabeled_order)
    assert plan.unlabeled_order == list(reversed(plan.class_order))
    # One more image at the head would break the cap: the pool is the largest that fits.
    assert sum(exponential_profile(int(counts.max()) + 1, 10, 10, plan.unlabeled_order)) > 900


def test_plan_same_seed_same_split_other_seed_differs():
    labels = _labels()
    a = plan_splits(labels, 10, SplitSpec(rho=10, n_max=300, val_per_class=50, seed=1))
    b = plan_splits(labels, 10, SplitSpec(rho=10, n_max=300, val_per_class=50, seed=1))
    c = plan_splits(labels, 10, SplitSpec(rho=10, n_max=300, val_per_class=50, seed=2))
    assert np.array_equal(a.labeled, b.labeled) and np.array_equal(a.unlabeled, b.unlabeled)
    assert not np.array_equal(a.labeled, c.labeled)


def test_plan_errors_name_the_problem_and_count():
    labels = _labels(per_class=100)
    with pytest.raises(DataError, match=r"fewer than val_per_class=200.*\(1000 examples affected\)"):
        plan_splits(labels, 10, SplitSpec(val_per_class=200))
    with pytest.raises(DataError, match=r"profile asks for \[500, 387.*only \[50, 50.*remain.*\(1540 examples affected\)"):
        plan_splits(labels, 10, SplitSpec(rho=10, n_max=500, val_per_class=50))


def test_validation_sized_to_the_data_and_errors_name_the_class_count_and_setting():
    from components.data.longtail import validation_counts, validation_per_class

    names = [f"c{i}" for i in range(3)]
    # a fifth of every class (issue #27: a balanced split capped by a 30-image tail gave 60 images in all)
    assert validation_counts([613, 160, 30], SplitSpec(val_per_class=None)) == [122, 32, 6]
    assert validation_counts([6000, 20, 2], SplitSpec(val_per_class=None)) == [300, 4, 1]  # cap and floor
    assert validation_counts([613, 160, 30], SplitSpec(val_per_class=5)) == [5, 5, 5]  # balanced when set
    assert validation_per_class([6000, 6000, 6000], SplitSpec(val_per_class=None)) == 300  # the cap
    assert validation_per_class([400, 120, 37], SplitSpec(val_per_class=None)) == 7  # a fifth of the smallest
    assert validation_per_class([400, 120, 3], SplitSpec(val_per_class=None)) == 1  # the floor
    with pytest.raises(DataError, match=r"classes \['c2'\] have \[1\] images: too few"):
        validation_per_class([400, 120, 1], SplitSpec(val_per_class=None), names)
    with pytest.raises(DataError, match=r"classes \['c1', 'c2'\] have fewer than val_per_class=300 images \(counts "
                                        r"\[120, 37\]\); lower data.val_per_class, or set it to none"):
        validation_per_class([400, 120, 37], SplitSpec(val_per_class=300), names)
    plan = plan_splits(np.repeat(np.arange(3), [400, 120, 37]), 3, SplitSpec(rho=None, val_per_class=None), names)
    assert plan.val_per_class == 7 and plan.val_counts == [80, 24, 7] and len(plan.validation) == 111
    assert plan.labeled_counts == [320, 96, 30]
