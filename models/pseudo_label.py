"""Pseudo-label training (Yang & Xu, NeurIPS 2020) inside the Trainer's run_fn: what to train on.

The PseudoLabeler (components/pseudo_labeler.py) writes the pseudo-labeled pool and its statistics;
here the final Trainer decides, at run time, whether to use them (the DAG is static):

  semi=pseudo_label: always (the planner's own choice is still recorded, as advice);
  semi=auto:         when models.planner.plan chooses pseudo_label; when it chooses ssp, the final Trainer
                     runs SSP (plan_ssp, on the labeled images) and trains from it, unless pretrain.ssp
                     already ran or plan_ssp=none (then supervised only, SSP recommended in the reasons).

Training on D_L + accepted D_U minimises L(D_L) + w * L(D_U): every pseudo-labeled example carries the
sample weight w (no weights at all when w == 1). The loss's and sampler's class counts are those of the
training set actually read, labeled + accepted pseudo-labels; the priors weigh the pseudo-labels by w.

Pure Python / NumPy: no tfx.
"""

from __future__ import annotations

import numpy as np

from models import planner


def thresholds_from(semi_cfg) -> planner.PlannerThresholds:
    return planner.PlannerThresholds(
        min_relevance=semi_cfg.plan_min_relevance, min_in_domain_examples=semi_cfg.plan_min_in_domain_examples,
        min_pool_to_labeled_ratio=semi_cfg.plan_min_pool_to_labeled_ratio, max_pool_imbalance=semi_cfg.plan_max_pool_imbalance)


def decide(semi_cfg, stats: dict, pl_stats: dict | None, ssp: str = "none") -> dict:
    """The plan, JSON-ready: {choice, reasons, estimates} of models.planner plus ``semi`` (the setting)
    and ``trained_with`` (pseudo_label | ssp | supervised): what the final Trainer does (ssp: pre-trains
    itself, then supervised from that backbone)."""
    pool = (planner.PoolEstimates.from_pseudo_label_stats(pl_stats) if pl_stats is not None
            else planner.PoolEstimates(size=0))
    result = planner.plan(stats["num_examples"], stats["class_counts"], pool, thresholds_from(semi_cfg))
    result["reasons"] = list(result["reasons"])
    choice = result["choice"]
    accepted = int((pl_stats or {}).get("num_accepted") or 0)
    if semi_cfg.semi == "pseudo_label":
        trained_with = planner.PSEUDO_LABEL
        if choice != planner.PSEUDO_LABEL:
            result["reasons"].append(f"semi=pseudo_label overrides the planner's choice ({choice}): trained with "
                                     "pseudo-labels anyway")
    elif semi_cfg.semi == "auto":
        trained_with = planner.PSEUDO_LABEL if choice == planner.PSEUDO_LABEL else planner.SUPERVISED
        if choice == planner.SSP and ssp != "none":
            result["reasons"].append(f"self-supervised pre-training is already on (pretrain.ssp={ssp}): the final model "
                                     "is the supervised one warm-started from it")
        elif choice == planner.SSP and semi_cfg.plan_ssp != "none":
            trained_with = planner.SSP
            result["inline_ssp"] = semi_cfg.plan_ssp
            result["reasons"].append(f"the final Trainer runs {semi_cfg.plan_ssp} self-supervised pre-training on the "
                                     "labeled images (pretrain.* settings) and trains the supervised model from it "
                                     "(plan_ssp)")
        elif choice == planner.SSP:
            result["reasons"][-1] = result["reasons"][-1].replace("is used instead", "is recommended instead")
            result["reasons"].append("self-supervised pre-training is recommended but not run (plan_ssp=none): the final "
                                     "model is trained on the labeled images only; to follow the recommendation, run "
                                     "again with `--set ssp=rotation` (or ssp=moco)")
    else:
        raise ValueError(f"decide() is for semi=pseudo_label or auto, got {semi_cfg.semi!r}")
    if trained_with == planner.PSEUDO_LABEL and accepted == 0:
        trained_with = planner.SUPERVISED
        result["reasons"].append("no pseudo-label was accepted (threshold/top-k left 0 pool images): supervised only")
    result["semi"] = semi_cfg.semi
    result["trained_with"] = trained_with
    return result


def combined_stats(stats: dict, per_class_accepted, weight: float) -> dict:
    """Label statistics of labeled + accepted pseudo-labeled examples, for the loss, sampler and steps."""
    labeled = np.asarray(stats["class_counts"], np.int64)
    accepted = np.asarray(per_class_accepted, np.int64)
    if labeled.shape != accepted.shape:
        raise ValueError(f"pseudo-label statistics have {accepted.size} classes, the labeled set {labeled.size}")
    counts = labeled + accepted
    weighted = labeled + weight * accepted
    out = dict(stats)
    out.update(class_counts=counts.tolist(), num_examples=int(counts.sum()),
               class_priors=(weighted / weighted.sum()).tolist(),
               labeled_class_counts=labeled.tolist(), pseudo_label_class_counts=accepted.tolist())
    return out


PSEUDO_LABEL_KEYS = ("confidence_threshold", "top_k_per_class", "per_class_predicted", "per_class_accepted", "num_accepted",
                     "num_pool_examples", "confidence_histogram", "raw_class_distribution", "raw_rho_u",
                     "estimated_class_distribution", "estimated_rho_u", "class_distribution_method",
                     "estimated_relevance", "relevance_score", "validation_split", "validation_examples")


def pseudo_label_block(pl_stats: dict, weight: float, used: bool) -> dict:
    """metrics.json's ``pseudo_labels``: the PseudoLabeler's counts and the pool estimates."""
    block = {k: pl_stats.get(k) for k in PSEUDO_LABEL_KEYS}
    block["threshold"] = block.pop("confidence_threshold")
    block["weight"] = weight
    block["used_for_training"] = used
    return block


def explain(result: dict) -> str:
    """The decision in one sentence (report.md): models.planner.explain when the run did what the planner chose,
    else what was done and why."""
    choice, trained = result["choice"], result["trained_with"]
    e = result["estimates"]
    pool = f"the {e['pool_size']:,}-image unlabeled pool" + (
        "" if e["pool_relevance"] is None else f" (about {e['pool_relevance']:.0%} of it like the labeled images)")
    if trained == planner.SSP:
        why = result["reasons"][-2].split(":")[0]
        return (f"{pool[0].upper() + pool[1:]} was not pseudo-labeled ({why}); instead the Trainer ran "
                f"{result.get('inline_ssp', 'rotation')} self-supervised pre-training on the labeled images and trained "
                "the model from it.")
    if result.get("semi") != "pseudo_label" and choice == trained:
        return planner.explain(result)
    if trained == planner.PSEUDO_LABEL:
        advice = "" if choice == planner.PSEUDO_LABEL else f", although the planner would have chosen {choice}"
        return (f"The model labeled {pool} and was retrained on the labeled images plus these pseudo-labels, because "
                f"semi=pseudo_label was set{advice}.")
    if choice == planner.SSP:
        why = result["reasons"][-2].split(":")[0]
        return (f"{pool[0].upper() + pool[1:]} was not pseudo-labeled ({why}), so the model was trained on the labeled "
                f"images only; self-supervised pre-training is recommended instead (run again with --set ssp=rotation)."
                if "recommended" in result["reasons"][-1] else
                f"{pool[0].upper() + pool[1:]} was not pseudo-labeled ({why}); the model was trained on the labeled images, "
                f"warm-started from the self-supervised pre-training.")
    return f"The model was trained on the labeled images only: {result['reasons'][-1]}."
