"""The gate: absolute floors or ceilings, then "no worse than the last blessed model" (pure Python).

One :func:`decide` for every task. A task supplies a :class:`Gate`: its thresholds type, its absolute checks and
its checks against the last blessed model; ``decide`` adds the "no blessed model yet" check and the verdict. Each
check is a dict: ``check`` (its name), ``value``, ``threshold``, ``passed``, ``detail`` and, where the task judges
how sure it is, ``certainty``.
"""

from __future__ import annotations

import abc
import dataclasses

NOT_APPLICABLE = "few-shot group empty: check not applicable"


def check(name: str, value, threshold, passed, detail: str = "", certainty: str | None = None) -> dict:
    """One check of the gate, as the evaluation JSON and the report hold it."""
    return {"check": name, "value": value, "threshold": threshold, "passed": bool(passed), "detail": detail,
            **({"certainty": certainty} if certainty else {})}


class Gate(abc.ABC):
    """What one task's gate supplies to :func:`decide`."""

    thresholds: type  # the task's thresholds dataclass (its section of the config)
    judged_on: str  # what a first model, with no blessed model before it, is judged on

    @abc.abstractmethod
    def absolute_checks(self, candidate: dict, t) -> list[dict]:
        """The candidate's metrics against the thresholds alone."""

    @abc.abstractmethod
    def baseline_checks(self, candidate: dict, baseline: dict, t) -> list[dict]:
        """The candidate against the last blessed model scored on the same examples."""


def decide(gate: Gate, candidate: dict, baseline: dict | None, t, no_baseline_reason: str | None = None
           ) -> tuple[bool, list[dict]]:
    """Return (blessed, checks): ``gate``'s absolute checks, then its checks against ``baseline`` (the last blessed
    model's metrics), or, without one, a passed check saying why (``no_baseline_reason``: a last blessed model that
    is not comparable)."""
    checks = gate.absolute_checks(candidate, t)
    if baseline is None:
        checks.append(check("no worse than last blessed model", None, None, True, no_baseline_reason or
                            f"no blessed model yet: first model is judged on {gate.judged_on} only"))
    else:
        checks += gate.baseline_checks(candidate, baseline, t)
    return all(c["passed"] for c in checks), checks


@dataclasses.dataclass(frozen=True)
class GateThresholds:
    """The classification gate (``gate.*``): floors on the judged split's balanced accuracy and every class's recall,
    then the most the candidate may trail the last blessed model of the same label space."""

    min_balanced_accuracy: float = 0.5  # floor on the judged split's balanced accuracy
    min_per_class_recall: float = 0.1  # floor on every class's recall
    # The candidate may trail the last blessed model by at most this much (absolute), on balanced
    # accuracy and on the few-shot group's accuracy.
    max_drop_balanced_accuracy: float = 0.01
    max_drop_few_shot_accuracy: float = 0.02  # most the few-shot group's accuracy may trail the last blessed model's
    # not a check: the shift report (models/shift.py) says so, on stderr, in report.md and metrics.json, when the newest
    # labeled or pool class shares lie further than this (L1, 0..2) from those the last blessed model was trained on
    max_class_shift_l1: float = 0.2


def _side(interval, threshold):
    """"sure" when the interval lies on one side of the threshold, "unsure" when it spans it."""
    if not interval or threshold is None:
        return None
    return "sure" if interval[0] >= threshold or interval[1] < threshold else "unsure"


@dataclasses.dataclass(frozen=True)
class PerClassGate(Gate):
    """Classification: floors on balanced accuracy and on every class's recall; the drops of balanced accuracy and of
    the few-shot group's accuracy against the last blessed model.

    ``certainty`` of a check: "sure" (the interval lies on one side of the threshold), "unsure" (it spans it) or
    "too few images" (a class below models.uncertainty.MIN_SUPPORT), read from ``candidate["uncertainty"]`` when the
    evaluator gives it. ``comparison`` (models/uncertainty.py ``paired_drop`` on the same images, keys
    ``balanced_accuracy`` and ``few_shot``): a drop fails only when its one-sided lower bound exceeds the allowed
    drop. Without it the point drops are judged."""

    class_names: list | tuple
    comparison: dict | None = None
    thresholds = GateThresholds
    judged_on = "floors"

    def absolute_checks(self, candidate, t):
        u, names = candidate.get("uncertainty") or {}, self.class_names
        bal = candidate["balanced_accuracy"]
        ba_ci = u.get("balanced_accuracy_interval")
        checks = [check("balanced_accuracy >= floor", bal, t.min_balanced_accuracy,
                        bal is not None and bal >= t.min_balanced_accuracy,
                        f"{u['confidence']:.0%} interval [{ba_ci[0]:.3f}, {ba_ci[1]:.3f}] on "
                        f"{sum(u['per_class_support'])} images" if ba_ci else "", _side(ba_ci, t.min_balanced_accuracy))]
        recalls = candidate["per_class_recall"]
        failing = [(names[c], r) for c, r in enumerate(recalls) if r is not None and r < t.min_per_class_recall]
        worst = min((r for r in recalls if r is not None), default=None)
        detail = "below: " + ", ".join(f"{n} {r:.3f}" for n, r in failing) if failing else ""
        certainty = None
        if u:
            small = [names[c] for c in u["classes_too_small"]]
            spans = [names[c] for c, ci in enumerate(u["per_class_recall_interval"])
                     if ci and _side(ci, t.min_per_class_recall) == "unsure"]
            notes = ([f"too few images to judge {', '.join(small)} (fewer than {u['min_support']})"] if small else []) + \
                    ([f"interval spans the floor: {', '.join(spans)}"] if spans else [])
            detail = "; ".join([d for d in (detail, *notes) if d])
            certainty = "too few images" if small else ("unsure" if spans else "sure")
        return checks + [check("every class recall >= floor", worst, t.min_per_class_recall, not failing, detail, certainty)]

    def baseline_checks(self, candidate, baseline, t):
        checks, comparison = [], self.comparison or {}
        for name, key, allowed, cand, base in (
                ("balanced_accuracy drop vs last blessed", "balanced_accuracy", t.max_drop_balanced_accuracy,
                 candidate["balanced_accuracy"], baseline["balanced_accuracy"]),
                ("few-shot accuracy drop vs last blessed", "few_shot", t.max_drop_few_shot_accuracy,
                 candidate.get("few_shot_accuracy"), baseline.get("few_shot_accuracy"))):
            paired = comparison.get(key)
            if cand is None or base is None:
                checks.append(check(name, None, allowed, True, NOT_APPLICABLE))
            elif paired is None:
                checks.append(check(name, base - cand, allowed, base - cand <= allowed,
                                    f"baseline {base:.4f}, candidate {cand:.4f}"))
            else:
                lo, hi = paired["interval"]
                checks.append(check(
                    name, paired["drop"], allowed, paired["lower_bound"] <= allowed,
                    f"baseline {base:.4f}, candidate {cand:.4f} on the same {paired['images']} images "
                    f"({paired['images_that_differ']} answered differently); {paired['confidence']:.0%} interval on the "
                    f"drop [{lo:.3f}, {hi:.3f}]: fails only if its one-sided lower bound {paired['lower_bound']:.3f} > "
                    f"{allowed:g}", "sure" if paired["lower_bound"] > allowed or hi <= allowed else "unsure"))
        return checks


@dataclasses.dataclass(frozen=True)
class RegressionGateThresholds:
    """The regression gate: absolute ceilings on MAE overall and on the few-shot bins, and the most
    the candidate's MAE may exceed the last blessed model's (absolute, in target units)."""

    max_mae: float = 1e9  # ceiling on the test MAE (target units)
    max_few_shot_mae: float = 1e9  # ceiling on the few-shot bins' MAE
    max_mae_increase: float = 0.05  # most the MAE may exceed the last blessed model's
    max_few_shot_mae_increase: float = 0.5  # most the few-shot bins' MAE may exceed the last blessed model's


class RegressionGate(Gate):
    """Regression: ceilings on MAE overall and on the few-shot bins; their increases against the last blessed model.
    An empty few-shot group passes its checks as not applicable."""

    thresholds = RegressionGateThresholds
    judged_on = "ceilings"

    def absolute_checks(self, candidate, t):
        mae, few = candidate["mae"], candidate.get("few_shot_mae")
        return [check("mae <= ceiling", mae, t.max_mae, mae is not None and mae <= t.max_mae),
                check("few-shot mae <= ceiling", None, t.max_few_shot_mae, True, NOT_APPLICABLE) if few is None else
                check("few-shot mae <= ceiling", few, t.max_few_shot_mae, few <= t.max_few_shot_mae,
                      f"{candidate.get('few_shot_count')} examples in few-shot bins")]

    def baseline_checks(self, candidate, baseline, t):
        mae, base = candidate["mae"], baseline["mae"]
        checks = [check("mae increase vs last blessed", mae - base, t.max_mae_increase, mae - base <= t.max_mae_increase,
                        f"baseline {base:.4f}, candidate {mae:.4f}")]
        few, base_few, allowed = candidate.get("few_shot_mae"), baseline.get("few_shot_mae"), t.max_few_shot_mae_increase
        name = "few-shot mae increase vs last blessed"
        checks.append(check(name, None, allowed, True, NOT_APPLICABLE) if few is None or base_few is None else
                      check(name, few - base_few, allowed, few - base_few <= allowed,
                            f"baseline {base_few:.4f}, candidate {few:.4f}"))
        return checks
