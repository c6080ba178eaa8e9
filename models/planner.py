"""Data-aware planner: supervised only, pseudo-label training, or self-supervised pre-training (SSP).

The choice follows Yang & Xu, "Rethinking the Value of Labels for Improving Class-Imbalanced
Learning" (NeurIPS 2020): pseudo-labelling an unlabeled pool helps a long-tailed model when the pool
is relevant (same domain), even when the pool is itself imbalanced (their CIFAR-10-LT rho=50 runs with
a pool 5x the labeled set still gain at rho_U = 100; our own benchmark did not reproduce that part, so
the default caps rho_U at 10); irrelevant images erode the gain and can hurt;
SSP, which needs no extra data, is the better route when no good pool exists. With no pool at all
the run is supervised only.

Pure Python: the planner reads the label statistics (LabelStatsGen) and the pool estimates
(models/pool_estimates.py via the PseudoLabeler) and returns a JSON-ready plan
``{choice, reasons, estimates}``; :func:`explain` says the decision in one sentence.

Rules, in order (the first that fails decides):
  1. pool size 0                                         -> supervised
  2. estimated relevance < min_relevance                 -> ssp
  3. in-domain pool images (size x relevance) < min_in_domain_examples, or
     in-domain pool / labeled < min_pool_to_labeled_ratio -> ssp
  4. estimated rho_U > max_pool_imbalance (when set)     -> ssp
  otherwise                                              -> pseudo_label
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SUPERVISED, PSEUDO_LABEL, SSP = "supervised", "pseudo_label", "ssp"
CHOICES = (SUPERVISED, PSEUDO_LABEL, SSP)


@dataclass(frozen=True)
class PlannerThresholds:
    """When a pool is worth pseudo-labelling; the defaults are checked by ``make bench-semi``."""

    # The paper's gain shrinks as the pool's relevance falls and turns into a loss well before 50%;
    # 0.6 keeps a margin above that.
    min_relevance: float = 0.6
    # Below a few hundred in-domain images the pool adds fewer images than one medium class holds.
    min_in_domain_examples: int = 500
    # A pool a quarter of the labeled set still adds ~25% images overall and far more to the tail
    # (whose labeled classes hold a few percent); the paper used 5x, so this is a permissive floor.
    min_pool_to_labeled_ratio: float = 0.25
    # The paper found pseudo-labels help at every rho_U it tried (1 to 100); bench/results/semi_rho100.md did not:
    # with the logit-adjusted base and final loss, a rho_U=1 pool helped (balanced and few-shot accuracy) and a
    # rho_U=100 pool cost accuracy, and the corrected rho_U estimates (about 1.3 vs about 200) sit far either side of 10.
    max_pool_imbalance: float | None = 10.0


@dataclass(frozen=True)
class PoolEstimates:
    """What is known of the unlabeled pool: its size (counted), the rest estimated (None = not estimated)."""

    size: int
    relevance: float | None = None
    rho_u: float | None = None

    @classmethod
    def from_pseudo_label_stats(cls, stats: dict) -> PoolEstimates:
        """From the PseudoLabeler's ``pseudo_label_stats.json`` (components/pseudo_labeler.py)."""
        return cls(int(stats["num_pool_examples"]), stats.get("estimated_relevance"), stats.get("estimated_rho_u"))


def plan(num_labeled: int, class_counts, pool: PoolEstimates, thresholds: PlannerThresholds | None = None) -> dict:
    """{choice: supervised | pseudo_label | ssp, reasons: [str], estimates: {...}} from labels and pool."""
    thresholds = thresholds or PlannerThresholds()
    if num_labeled <= 0:
        raise ValueError(f"planner: the labeled set is empty ({num_labeled} examples)")
    counts = [int(n) for n in class_counts]
    present = [n for n in counts if n > 0]
    relevance = pool.relevance
    in_domain = pool.size * (1.0 if relevance is None else relevance)
    estimates = {
        "num_labeled": int(num_labeled),
        "labeled_imbalance_ratio": max(present) / min(present) if present else None,
        "pool_size": int(pool.size),
        "pool_relevance": relevance,
        "pool_in_domain_examples": round(in_domain, 1),
        "pool_to_labeled_ratio": round(in_domain / num_labeled, 4),
        "pool_rho_u": pool.rho_u,
        "thresholds": dataclasses.asdict(thresholds),
    }

    def decided(choice, reasons):
        return {"choice": choice, "reasons": reasons, "estimates": estimates}

    if pool.size <= 0:
        return decided(SUPERVISED, ["the unlabeled pool is empty (0 images): supervised training on the labeled set only"])

    reasons = []
    if relevance is None:
        reasons.append("pool relevance was not estimated (no validation split to calibrate on): treated as fully in-domain")
    elif relevance < thresholds.min_relevance:
        return decided(SSP, [f"estimated relevance {relevance:.2f} < {thresholds.min_relevance:.2f}: pseudo-labels on a "
                             f"pool this far out of domain erode the gain and can hurt, so self-supervised "
                             f"pre-training is used instead"])
    else:
        reasons.append(f"estimated relevance {relevance:.2f} >= {thresholds.min_relevance:.2f}")

    if in_domain < thresholds.min_in_domain_examples:
        return decided(SSP, reasons + [f"about {in_domain:.0f} in-domain pool images < {thresholds.min_in_domain_examples}: "
                                       f"too few to pseudo-label, so self-supervised pre-training is used instead"])
    ratio = in_domain / num_labeled
    if ratio < thresholds.min_pool_to_labeled_ratio:
        return decided(SSP, reasons + [f"in-domain pool / labeled = {ratio:.2f} < {thresholds.min_pool_to_labeled_ratio:.2f}: "
                                       f"too small next to the labeled set, so self-supervised pre-training is used instead"])
    reasons.append(f"about {in_domain:.0f} in-domain pool images, {ratio:.2f}x the {num_labeled} labeled "
                   f"(>= {thresholds.min_pool_to_labeled_ratio:.2f}x and >= {thresholds.min_in_domain_examples})")

    if pool.rho_u is None:
        reasons.append("pool imbalance rho_U was not estimated")
    elif thresholds.max_pool_imbalance is not None and pool.rho_u > thresholds.max_pool_imbalance:
        return decided(SSP, reasons + [f"estimated pool imbalance rho_U {pool.rho_u:.1f} > {thresholds.max_pool_imbalance:g}: "
                                       f"pseudo-labels would mostly add head-class images, so self-supervised "
                                       f"pre-training is used instead"])
    else:
        reasons.append(f"estimated pool imbalance rho_U {pool.rho_u:.1f}"
                       + ("" if thresholds.max_pool_imbalance is None else f" <= {thresholds.max_pool_imbalance:g}")
                       + " (balanced enough for its pseudo-labels to add tail-class images)")
    return decided(PSEUDO_LABEL, reasons)


def explain(result: dict) -> str:
    """The plan in one sentence a user understands (for report.md)."""
    e, choice = result["estimates"], result["choice"]
    size = f"{e['pool_size']:,}-image"
    relevance = "" if e["pool_relevance"] is None else f", about {e['pool_relevance']:.0%} of it like the labeled images"
    if choice == SUPERVISED:
        return "Trained on the labeled images only, because there is no unlabeled pool."
    if choice == PSEUDO_LABEL:
        return (f"The model labeled the {size} unlabeled pool{relevance}, and was retrained on the labeled images "
                f"plus these pseudo-labels, because the pool is large and relevant enough to help the rare classes.")
    why = result["reasons"][-1].split(":")[0]
    comma = "," if relevance else ""
    return (f"The {size} unlabeled pool{relevance}{comma} was not pseudo-labeled ({why}); self-supervised "
            f"pre-training on the images is used instead.")
