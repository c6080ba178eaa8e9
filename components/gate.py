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


def decide(candidate: dict, baseline: dict | None, t: GateThresholds, class_names) -> tuple[bool, list[dict]]:
    """Return (blessed, checks). Each check: name, value, threshold, passed, detail."""
    checks = []

    def check(name, value, threshold, passed, detail=""):
        checks.append({"check": name, "value": value, "threshold": threshold, "passed": bool(passed), "detail": detail})

    bal = candidate["balanced_accuracy"]
    check("balanced_accuracy >= floor", bal, t.min_balanced_accuracy, bal is not None and bal >= t.min_balanced_accuracy)
    recalls = candidate["per_class_recall"]
    failing = [(class_names[c], r) for c, r in enumerate(recalls) if r is not None and r < t.min_per_class_recall]
    worst = min((r for r in recalls if r is not None), default=None)
    check("every class recall >= floor", worst, t.min_per_class_recall, not failing,
          "below: " + ", ".join(f"{n} {r:.3f}" for n, r in failing) if failing else "")
    if baseline is None:
        check("no worse than last blessed model", None, None, True, "no blessed model yet: first model is judged on floors only")
    else:
        drop = baseline["balanced_accuracy"] - bal
        check("balanced_accuracy drop vs last blessed", drop, t.max_drop_balanced_accuracy,
              drop <= t.max_drop_balanced_accuracy, f"baseline {baseline['balanced_accuracy']:.4f}, candidate {bal:.4f}")
        cand_few, base_few = candidate.get("few_shot_accuracy"), baseline.get("few_shot_accuracy")
        if cand_few is None or base_few is None:
            check("few-shot accuracy drop vs last blessed", None, t.max_drop_few_shot_accuracy, True,
                  "few-shot group empty: check not applicable")
        else:
            drop_few = base_few - cand_few
            check("few-shot accuracy drop vs last blessed", drop_few, t.max_drop_few_shot_accuracy,
                  drop_few <= t.max_drop_few_shot_accuracy, f"baseline {base_few:.4f}, candidate {cand_few:.4f}")
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
