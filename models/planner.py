"""Data-aware planner: supervised only, pseudo-label training, or self-supervised pre-training (SSP).

The choice follows Yang & Xu, "Rethinking the Value of Labels for Improving Class-Imbalanced
Learning" (NeurIPS 2020): pseudo-labelling an unlabeled pool helps a long-tailed model when the pool
is relevant (same domain), even when the pool is itself imbalanced (their CIFAR-10-LT rho=50 runs with
a pool 5x the labeled set still gain at rho_U = 100; our own benchmark did not reproduce that part, so
the default caps rho_U at 10); irrelevant images erode the gain and can hurt;
SSP, which needs no extra data, is the better route when no good pool exists. With no pool at all
the run is supervised only.

Pure Python: the planner reads the label statistics (LabelStatsGen) and the pool estimates
(models/pool_estimates.py via the PseudoLabeler) and returns a JSON-ready decision
``{choice, decided_by, reasons, estimates}`` whose reasons are data (``{"code": ..., values}``). This module
is the one place that turns a decision into words: :func:`reason_text` for one reason (the planner's and
the training mode's, models/pseudo_label.py), :func:`explain` for the whole decision in one sentence.

Rules, in order (the first that fails decides):
  1. pool size 0                                         -> supervised
  2. estimated relevance < min_relevance                 -> ssp
  3. in-domain pool images (size x relevance) < min_in_domain_examples, or
     in-domain pool / labeled < min_pool_to_labeled_ratio -> ssp
  4. estimated rho_U > max_pool_imbalance (when set)     -> ssp when the pool's imbalance runs the labeled set's way
     (its head classes hold most of it); pseudo_label when it is reversed (the labeled set's rare classes hold most
     of it: pseudo-labels add images where labels are fewest), from its estimated class distribution
  otherwise                                              -> pseudo_label
"""

from __future__ import annotations

from dataclasses import dataclass

from models.config import PlannerConfig

SUPERVISED, PSEUDO_LABEL, SSP = "supervised", "pseudo_label", "ssp"
CHOICES = (SUPERVISED, PSEUDO_LABEL, SSP)
PlannerThresholds = PlannerConfig  # the thresholds (and the SSP the Trainer may run) live in the config section

# The words for each reason code: "condition: why it matters". explain() quotes the condition part.
REASONS = {
    # the planner's rules
    "pool_empty": "the unlabeled pool is empty (0 images)",
    "relevance_not_estimated": "pool relevance was not estimated (no validation split to calibrate on): treated as "
                               "fully in-domain",
    "relevance_low": "estimated relevance {relevance:.2f} < {min_relevance:.2f}: pseudo-labels on a pool this far out of "
                     "domain erode the gain and can hurt",
    "relevance_ok": "estimated relevance {relevance:.2f} >= {min_relevance:.2f}",
    "in_domain_too_few": "about {in_domain:.0f} in-domain pool images < {min_in_domain_examples}: too few to pseudo-label",
    "pool_too_small": "in-domain pool / labeled = {ratio:.2f} < {min_pool_to_labeled_ratio:.2f}: too small next to the "
                      "labeled set",
    "pool_size_ok": "about {in_domain:.0f} in-domain pool images, {ratio:.2f}x the {num_labeled} labeled "
                    "(>= {min_pool_to_labeled_ratio:.2f}x and >= {min_in_domain_examples})",
    "rho_u_not_estimated": "pool imbalance rho_U was not estimated",
    "rho_u_high": "estimated pool imbalance rho_U {rho_u:.1f} > {max_pool_imbalance:g}: pseudo-labels would mostly add "
                  "head-class images",
    "rho_u_high_reversed": "estimated pool imbalance rho_U {rho_u:.1f} > {max_pool_imbalance:g}, but its frequent classes "
                           "are the labeled set's rare ones (the labeled head classes hold {head_share:.2f} of it): its "
                           "pseudo-labels add images where the labeled set has fewest (a user's folder whose pool is what "
                           "train/ left over, bench/results/own_folder.md: 0.956 test balanced accuracy with them, 0.910 "
                           "with SSP)",
    "rho_u_ok": "estimated pool imbalance rho_U {rho_u:.1f}{bound} (balanced enough for its pseudo-labels to add "
                "tail-class images)",
    # what the training mode made of the choice (models/pseudo_label.py)
    "mode_overrides": "semi.method={mode} overrides the planner's choice ({choice}): trained with pseudo-labels anyway",
    "ssp_already_on": "self-supervised pre-training is already on (pretrain.method={ssp}): the final model is the "
                      "supervised one warm-started from it",
    "ssp_inline": "the final Trainer runs {ssp} self-supervised pre-training on the labeled images (pretrain.* settings) "
                  "and trains the supervised model from it (semi.planner.ssp)",
    "ssp_recommended": "self-supervised pre-training is recommended but not run (semi.planner.ssp=none): the final model "
                       "is trained on the labeled images only; to follow the recommendation, run again with "
                       "`--set ssp=rotation` (or ssp=moco)",
    "none_accepted": "no pseudo-label was accepted (threshold/top-k left 0 pool images): supervised only",
}
# What the deciding reason's words end with, by the planner's choice.
CONSEQUENCE = {SUPERVISED: ": supervised training on the labeled set only",
               PSEUDO_LABEL: "",
               SSP: ", so self-supervised pre-training is chosen instead"}


def reason(code: str, **values) -> dict:
    if code not in REASONS:
        raise KeyError(f"no words for planner reason {code!r}")
    return {"code": code, **values}


def reason_text(r: dict) -> str:
    return REASONS[r["code"]].format(**{k: v for k, v in r.items() if k != "code"})


def reasons_text(decision: dict) -> list[str]:
    """Every reason of the decision in words, the deciding one with its consequence."""
    out = []
    for r in decision["reasons"]:
        text = reason_text(r)
        out.append(text + CONSEQUENCE[decision["choice"]] if r["code"] == decision.get("decided_by") else text)
    return out


@dataclass(frozen=True)
class PoolEstimates:
    """What is known of the unlabeled pool: its size (counted), the rest estimated (None = not estimated)."""

    size: int
    relevance: float | None = None
    rho_u: float | None = None
    class_distribution: tuple | None = None  # estimated (BBSE) share of each class in the pool

    @classmethod
    def from_pseudo_label_stats(cls, stats: dict) -> PoolEstimates:
        """From the PseudoLabeler's ``pseudo_label_stats.json`` (components/pseudo_labeler.py)."""
        q = stats.get("estimated_class_distribution")
        return cls(int(stats["num_pool_examples"]), stats.get("estimated_relevance"), stats.get("estimated_rho_u"),
                   tuple(float(v) for v in q) if q else None)


def head_share(class_counts, class_distribution) -> float | None:
    """The pool's share in the labeled set's head classes: the half of the classes with the most labeled images
    (ranked by count, never by index; an odd middle class counts as tail). Above 1/2 the pool's imbalance runs the
    labeled set's way; below, it is reversed."""
    counts = [int(n) for n in class_counts]
    if not class_distribution or len(class_distribution) != len(counts):
        return None
    head = sorted(range(len(counts)), key=lambda c: -counts[c])[:max(len(counts) // 2, 1)]
    total = sum(class_distribution)
    return float(sum(class_distribution[c] for c in head) / total) if total > 0 else None


def plan(num_labeled: int, class_counts, pool: PoolEstimates, thresholds: PlannerConfig | None = None) -> dict:
    """{choice: supervised | pseudo_label | ssp, decided_by: the deciding reason's code, reasons: [{code, ...}],
    estimates: {...}} from the labels and the pool."""
    t = thresholds or PlannerConfig()
    if num_labeled <= 0:
        raise ValueError(f"planner: the labeled set is empty ({num_labeled} examples)")
    counts = [int(n) for n in class_counts]
    present = [n for n in counts if n > 0]
    relevance = pool.relevance
    in_domain = pool.size * (1.0 if relevance is None else relevance)
    ratio = in_domain / num_labeled
    estimates = {
        "num_labeled": int(num_labeled),
        "labeled_imbalance_ratio": max(present) / min(present) if present else None,
        "pool_size": int(pool.size),
        "pool_relevance": relevance,
        "pool_in_domain_examples": round(in_domain, 1),
        "pool_to_labeled_ratio": round(ratio, 4),
        "pool_rho_u": pool.rho_u,
        "pool_head_share": head_share(counts, pool.class_distribution),
        "thresholds": t.thresholds(),
    }
    reasons = []

    def decided(choice, code, **values):
        reasons.append(reason(code, **values))
        return {"choice": choice, "decided_by": code, "reasons": reasons, "estimates": estimates}

    if pool.size <= 0:
        return decided(SUPERVISED, "pool_empty")
    if relevance is None:
        reasons.append(reason("relevance_not_estimated"))
    elif relevance < t.min_relevance:
        return decided(SSP, "relevance_low", relevance=relevance, min_relevance=t.min_relevance)
    else:
        reasons.append(reason("relevance_ok", relevance=relevance, min_relevance=t.min_relevance))
    if in_domain < t.min_in_domain_examples:
        return decided(SSP, "in_domain_too_few", in_domain=in_domain, min_in_domain_examples=t.min_in_domain_examples)
    if ratio < t.min_pool_to_labeled_ratio:
        return decided(SSP, "pool_too_small", ratio=ratio, min_pool_to_labeled_ratio=t.min_pool_to_labeled_ratio)
    reasons.append(reason("pool_size_ok", in_domain=in_domain, ratio=ratio, num_labeled=int(num_labeled),
                          min_pool_to_labeled_ratio=t.min_pool_to_labeled_ratio,
                          min_in_domain_examples=t.min_in_domain_examples))
    if pool.rho_u is None:
        return decided(PSEUDO_LABEL, "rho_u_not_estimated")
    if t.max_pool_imbalance is not None and pool.rho_u > t.max_pool_imbalance:
        share = estimates["pool_head_share"]
        if share is not None and share < 0.5:
            return decided(PSEUDO_LABEL, "rho_u_high_reversed", rho_u=pool.rho_u, max_pool_imbalance=t.max_pool_imbalance,
                           head_share=share)
        return decided(SSP, "rho_u_high", rho_u=pool.rho_u, max_pool_imbalance=t.max_pool_imbalance)
    bound = "" if t.max_pool_imbalance is None else f" <= {t.max_pool_imbalance:g}"
    return decided(PSEUDO_LABEL, "rho_u_ok", rho_u=pool.rho_u, bound=bound)


def _deciding(decision: dict) -> str:
    """The deciding reason's condition, the part of its words before the colon."""
    r = next(r for r in decision["reasons"] if r["code"] == decision["decided_by"])
    return reason_text(r).split(":")[0]


def explain(decision: dict) -> str:
    """The decision in one sentence a user understands (report.md). With ``trained_with`` (what the Trainer
    did, models/pseudo_label.py) the sentence says what was done when it differs from the planner's choice."""
    e, choice = decision["estimates"], decision["choice"]
    trained = decision.get("trained_with")  # None: the planner's decision alone, nothing trained yet
    codes = [r["code"] for r in decision["reasons"]]
    rel = "" if e["pool_relevance"] is None else f"about {e['pool_relevance']:.0%} of it like the labeled images"
    pool = f"the {e['pool_size']:,}-image unlabeled pool"
    pool_rel = pool + (f" ({rel})" if rel else "")
    Pool_rel = pool_rel[0].upper() + pool_rel[1:]
    if trained == SSP:
        return (f"{Pool_rel} was not pseudo-labeled ({_deciding(decision)}); instead the Trainer ran "
                f"{decision.get('inline_ssp', 'rotation')} self-supervised pre-training on the labeled images and trained "
                "the model from it.")
    if trained == PSEUDO_LABEL and "mode_overrides" in codes:
        advice = "" if choice == PSEUDO_LABEL else f", although the planner would have chosen {choice}"
        return (f"The model labeled {pool_rel} and was retrained on the labeled images plus these pseudo-labels, because "
                f"semi.method={decision.get('semi', PSEUDO_LABEL)} was set{advice}.")
    if trained is None and choice == SSP:  # the planner alone (no Trainer outcome recorded)
        size_rel = f"The {e['pool_size']:,}-image unlabeled pool" + (f", {rel}," if rel else "")
        return (f"{size_rel} was not pseudo-labeled ({_deciding(decision)}); self-supervised pre-training on the images "
                "is used instead.")
    trained = trained or choice
    if choice == SUPERVISED and trained == SUPERVISED:
        return "Trained on the labeled images only, because there is no unlabeled pool."
    if choice == PSEUDO_LABEL and trained == PSEUDO_LABEL:
        size_rel = f"the {e['pool_size']:,}-image unlabeled pool" + (f", {rel}," if rel else "")
        return (f"The model labeled {size_rel} and was retrained on the labeled images plus these pseudo-labels, "
                f"because the pool is large and relevant enough to help the rare classes.")
    if choice == SSP and "ssp_recommended" in codes:
        return (f"{Pool_rel} was not pseudo-labeled ({_deciding(decision)}), so the model was trained on the labeled "
                f"images only; self-supervised pre-training is recommended instead (run again with --set ssp=rotation).")
    if choice == SSP and "ssp_already_on" in codes:
        return (f"{Pool_rel} was not pseudo-labeled ({_deciding(decision)}); the model was trained on the labeled images, "
                f"warm-started from the self-supervised pre-training.")
    return f"The model was trained on the labeled images only: {reason_text(decision['reasons'][-1])}."
