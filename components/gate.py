"""The per-class gate: absolute floors and "no worse than the last blessed model" (pure Python)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GateThresholds:
    min_balanced_accuracy: float = 0.5
    min_per_class_recall: float = 0.1
    # The candidate may trail the last blessed model by at most this much (absolute), on balanced
    # accuracy and on the few-shot group's accuracy.
    max_drop_balanced_accuracy: float = 0.01
    max_drop_few_shot_accuracy: float = 0.02


def decide(candidate: dict, baseline: dict | None, t: GateThresholds, class_names, comparison: dict | None = None,
           no_baseline_reason: str | None = None) -> tuple[bool, list[dict]]:
    """Return (blessed, checks). Each check: name, value, threshold, passed, detail, and ``certainty``: "sure" (the
    interval lies on one side of the threshold), "unsure" (it spans it) or "too few images" (a class below
    models.uncertainty.MIN_SUPPORT), read from ``candidate["uncertainty"]`` when the evaluator gives it.

    ``comparison`` (models/uncertainty.py ``paired_drop`` on the same images, keys ``balanced_accuracy`` and
    ``few_shot``): a drop fails only when its one-sided lower bound exceeds the allowed drop. Without it the point
    drops are judged. ``no_baseline_reason``: a last blessed model that is not comparable (another label space)."""
    checks = []
    u = candidate.get("uncertainty") or {}

    def check(name, value, threshold, passed, detail="", certainty=None):
        checks.append({"check": name, "value": value, "threshold": threshold, "passed": bool(passed), "detail": detail,
                       **({"certainty": certainty} if certainty else {})})

    def side(interval, threshold):
        if not interval or threshold is None:
            return None
        return "sure" if interval[0] >= threshold or interval[1] < threshold else "unsure"

    bal = candidate["balanced_accuracy"]
    ba_ci = u.get("balanced_accuracy_interval")
    check("balanced_accuracy >= floor", bal, t.min_balanced_accuracy, bal is not None and bal >= t.min_balanced_accuracy,
          f"{u['confidence']:.0%} interval [{ba_ci[0]:.3f}, {ba_ci[1]:.3f}] on {sum(u['per_class_support'])} images"
          if ba_ci else "", side(ba_ci, t.min_balanced_accuracy))
    recalls = candidate["per_class_recall"]
    failing = [(class_names[c], r) for c, r in enumerate(recalls) if r is not None and r < t.min_per_class_recall]
    worst = min((r for r in recalls if r is not None), default=None)
    detail = "below: " + ", ".join(f"{n} {r:.3f}" for n, r in failing) if failing else ""
    certainty = None
    if u:
        small = [class_names[c] for c in u["classes_too_small"]]
        spans = [class_names[c] for c, ci in enumerate(u["per_class_recall_interval"])
                 if ci and side(ci, t.min_per_class_recall) == "unsure"]
        notes = ([f"too few images to judge {', '.join(small)} (fewer than {u['min_support']})"] if small else []) + \
                ([f"interval spans the floor: {', '.join(spans)}"] if spans else [])
        detail = "; ".join([d for d in (detail, *notes) if d])
        certainty = "too few images" if small else ("unsure" if spans else "sure")
    check("every class recall >= floor", worst, t.min_per_class_recall, not failing, detail, certainty)
    if baseline is None:
        check("no worse than last blessed model", None, None, True, no_baseline_reason or
              "no blessed model yet: first model is judged on floors only")
        return all(c["passed"] for c in checks), checks
    comparison = comparison or {}
    for name, key, allowed, cand, base in (
            ("balanced_accuracy drop vs last blessed", "balanced_accuracy", t.max_drop_balanced_accuracy,
             bal, baseline["balanced_accuracy"]),
            ("few-shot accuracy drop vs last blessed", "few_shot", t.max_drop_few_shot_accuracy,
             candidate.get("few_shot_accuracy"), baseline.get("few_shot_accuracy"))):
        if cand is None or base is None:
            check(name, None, allowed, True, "few-shot group empty: check not applicable")
            continue
        paired = comparison.get(key)
        if paired is None:
            check(name, base - cand, allowed, base - cand <= allowed, f"baseline {base:.4f}, candidate {cand:.4f}")
            continue
        lo, hi = paired["interval"]
        check(name, paired["drop"], allowed, paired["lower_bound"] <= allowed,
              f"baseline {base:.4f}, candidate {cand:.4f} on the same {paired['images']} images "
              f"({paired['images_that_differ']} answered differently); {paired['confidence']:.0%} interval on the drop "
              f"[{lo:.3f}, {hi:.3f}]: fails only if its one-sided lower bound {paired['lower_bound']:.3f} > {allowed:g}",
              "sure" if paired["lower_bound"] > allowed or hi <= allowed else "unsure")
    return all(c["passed"] for c in checks), checks


@dataclasses.dataclass(frozen=True)
class RegressionGateThresholds:
    """The regression gate: absolute ceilings on MAE overall and on the few-shot bins, and the most
    the candidate's MAE may exceed the last blessed model's (absolute, in target units)."""

    max_mae: float = 1e9
    max_few_shot_mae: float = 1e9
    max_mae_increase: float = 0.05
    max_few_shot_mae_increase: float = 0.5


def decide_regression(candidate: dict, baseline: dict | None, t: RegressionGateThresholds) -> tuple[bool, list[dict]]:
    """Return (blessed, checks), checks as :func:`decide`'s. An empty few-shot group passes its checks
    as not applicable."""
    checks = []

    def check(name, value, threshold, passed, detail=""):
        checks.append({"check": name, "value": value, "threshold": threshold, "passed": bool(passed), "detail": detail})

    mae, few = candidate["mae"], candidate.get("few_shot_mae")
    check("mae <= ceiling", mae, t.max_mae, mae is not None and mae <= t.max_mae)
    if few is None:
        check("few-shot mae <= ceiling", None, t.max_few_shot_mae, True, "few-shot group empty: check not applicable")
    else:
        check("few-shot mae <= ceiling", few, t.max_few_shot_mae, few <= t.max_few_shot_mae,
              f"{candidate.get('few_shot_count')} examples in few-shot bins")
    if baseline is None:
        check("no worse than last blessed model", None, None, True,
              "no blessed model yet: first model is judged on ceilings only")
        return all(c["passed"] for c in checks), checks
    rise = mae - baseline["mae"]
    check("mae increase vs last blessed", rise, t.max_mae_increase, rise <= t.max_mae_increase,
          f"baseline {baseline['mae']:.4f}, candidate {mae:.4f}")
    base_few = baseline.get("few_shot_mae")
    if few is None or base_few is None:
        check("few-shot mae increase vs last blessed", None, t.max_few_shot_mae_increase, True,
              "few-shot group empty: check not applicable")
    else:
        rise_few = few - base_few
        check("few-shot mae increase vs last blessed", rise_few, t.max_few_shot_mae_increase,
              rise_few <= t.max_few_shot_mae_increase, f"baseline {base_few:.4f}, candidate {few:.4f}")
    return all(c["passed"] for c in checks), checks
