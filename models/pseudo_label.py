"""Pseudo-label training (Yang & Xu, NeurIPS 2020) inside the Trainer's run_fn: what to train on.

The PseudoLabeler (components/pseudo_labeler.py) writes the pseudo-labeled pool and its statistics;
here the final Trainer decides, at run time, whether to use them (the DAG is static). The training
mode (models/modes.py) says how the planner's choice is taken:

  follows_plan=False (pseudo_label): always pseudo-labels (the planner's choice is still recorded, as advice);
  follows_plan=True (auto):         pseudo-labels when models.planner.plan chooses them; when it chooses ssp,
                     the final Trainer runs SSP (semi.planner.ssp, on the labeled images) and trains from it,
                     unless pretrain.method already ran or semi.planner.ssp=none (then supervised only, SSP
                     recommended in the reasons).

Training on D_L + accepted D_U minimises L(D_L) + w * L(D_U): every pseudo-labeled example carries the
sample weight w (no weights at all when w == 1). The loss's and sampler's class counts are those of the
training set actually read, labeled + accepted pseudo-labels; the priors weigh the pseudo-labels by w.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import numpy as np
import tensorflow as tf

from models import backbones, planner, retrain, ssp, toolkit, training
from models.config import SemiConfig
from models.job import INIT_MODEL_KEY, PSEUDO_LABEL_STATS_PATH_KEY, PSEUDO_LABELED_FILES_KEY
from models.planner import reason
from models.pseudo_label_stats import pseudo_label_block


def decide(semi_cfg: SemiConfig, stats: dict, pl_stats: dict | None, pretrain_method: str = "none") -> dict:
    """The plan, JSON-ready: models.planner.plan's decision plus the mode's outcome reasons, ``semi`` (the
    mode) and ``trained_with`` (pseudo_label | ssp | supervised): what the final Trainer does (ssp: pre-trains
    itself, then supervised from that backbone); ``reasons_text`` has every reason in words."""
    mode = semi_cfg.mode
    if not mode.plans:
        raise ValueError(f"decide() is for the planned modes, not semi.method={mode.name}")
    pool = (planner.PoolEstimates.from_pseudo_label_stats(pl_stats) if pl_stats is not None
            else planner.PoolEstimates(size=0))
    result = planner.plan(stats["num_examples"], stats["class_counts"], pool, semi_cfg.planner)
    choice = result["choice"]
    accepted = int((pl_stats or {}).get("num_accepted") or 0)
    if not mode.follows_plan:
        trained_with = planner.PSEUDO_LABEL
        if choice != planner.PSEUDO_LABEL:
            result["reasons"].append(reason("mode_overrides", mode=mode.name, choice=choice))
    else:
        trained_with = planner.PSEUDO_LABEL if choice == planner.PSEUDO_LABEL else planner.SUPERVISED
        if choice == planner.SSP and pretrain_method != "none":
            result["reasons"].append(reason("ssp_already_on", ssp=pretrain_method))
        elif choice == planner.SSP and mode.inline_ssp and semi_cfg.planner.ssp != "none":
            trained_with = planner.SSP
            result["inline_ssp"] = semi_cfg.planner.ssp
            result["reasons"].append(reason("ssp_inline", ssp=semi_cfg.planner.ssp))
        elif choice == planner.SSP:
            result["reasons"].append(reason("ssp_recommended"))
    if trained_with == planner.PSEUDO_LABEL and accepted == 0:
        trained_with = planner.SUPERVISED
        result["reasons"].append(reason("none_accepted"))
    result["semi"] = mode.name
    result["trained_with"] = trained_with
    result["reasons_text"] = planner.reasons_text(result)
    return result


def inline_ssp(job: toolkit.TrainingJob, method: str) -> tuple[dict, str]:
    """The planner chose SSP: pre-train the backbone here on the labeled images (``method`` with the
    pretrain.* settings) and return (its summary, the folder of its weights for the strict warm start)."""
    cfg = dataclasses.replace(job.pretrain, method=method, data="labeled")
    ssp_dir = os.path.join(job.model_run_dir, "ssp")
    weights = os.path.join(ssp_dir, "backbone")
    summary = ssp.pretrain_backbone(cfg, job.train.backbone, job.image_shape, [job.train_files], ssp_dir, weights,
                                    job.eval_files)
    return summary, weights


def _plan(job: toolkit.TrainingJob) -> tuple[dict, dict | None]:
    """(the planner's decision, the PseudoLabeler's statistics or None): the same on every worker of a cluster."""
    pl_stats = None
    if job.inputs.get(PSEUDO_LABEL_STATS_PATH_KEY):
        with tf.io.gfile.GFile(job.inputs[PSEUDO_LABEL_STATS_PATH_KEY]) as f:
            pl_stats = json.load(f)
    elif job.mode.pool == "required":
        job.require(PSEUDO_LABEL_STATS_PATH_KEY, "pseudo_labeled_examples and pseudo_label_stats inputs (the "
                    "PseudoLabeler's outputs)")
    return decide(job.semi, job.stats, pl_stats, job.pretrain.method), pl_stats


def planned_choice(job: toolkit.TrainingJob) -> str:
    """What the final Trainer will train with (models.planner: pseudo_label, ssp or supervised), before it trains:
    the Trainer's run_fn asks, to keep an inline SSP in one process."""
    return _plan(job)[0]["trained_with"]


def train_planned(job: toolkit.TrainingJob) -> toolkit.TrainResult:
    """The ``pseudo_label`` and ``auto`` modes: plan from the PseudoLabeler's statistics, then train on the labeled
    set plus the accepted pseudo-labels, or from an inline SSP, or on the labeled set only. Under a strategy
    (``job.strategy``, models/distribute.py) the training is data-parallel: the pseudo-labeled examples join the
    labeled ones in each worker's shard, and the base model's weights (``init_model``) are loaded in every worker
    from the same files, under the strategy's scope."""
    weight = job.semi.pseudo_label.weight
    plan, pl_stats = _plan(job)
    use = plan["trained_with"] == planner.PSEUDO_LABEL
    print(f"[trainer] plan ({job.mode.name}): {plan['choice']}; trained with {plan['trained_with']}: "
          + "; ".join(plan["reasons_text"]), file=sys.stderr, flush=True)
    pseudo_files, train_stats, backbone, ssp_summary, init = None, job.stats, job.base_model, None, None
    train_cfg = job.train
    if use:
        pseudo_files = job.require(PSEUDO_LABELED_FILES_KEY, "pseudo_labeled_examples input")
        train_stats = combined_stats(job.stats, pl_stats["per_class_accepted"], weight)
        if job.semi.pseudo_label.final_epochs is not None:
            train_cfg = dataclasses.replace(job.train, epochs=job.semi.pseudo_label.final_epochs)
        if job.semi.pseudo_label.init == "base":  # the base model already holds the pre-trained backbone, if any
            init, backbone = job.require(INIT_MODEL_KEY, "init_model input (the base model)"), None
    # a retrain from the last blessed model (models/retrain.py): fewer epochs; from the base model when it continues
    # from one (the base model was warm-started by the same decision), else from the blessed model; no inline SSP
    start = job.start_for(train_cfg.epochs)
    warm = start["start"] == retrain.WARM
    if warm:
        train_cfg = retrain.stage_config(train_cfg, start)
        if init is None:
            init, backbone = start["model"], None
    if plan["trained_with"] == planner.SSP and warm:
        plan["reasons_text"] = [*plan["reasons_text"], "no inline SSP: the model starts from the last blessed model"]
    elif plan["trained_with"] == planner.SSP:
        if job.strategy is not None:  # models.trainer.run_fn keeps this plan in one process
            raise AssertionError("inline SSP under a distribution strategy")
        ssp_summary, backbone = inline_ssp(job, plan["inline_ssp"])
    model, history = training.train(train_cfg, job.train_files, train_stats, job.image_shape, job.model_run_dir,
                                    job.warm_backup_dir(), backbone_weights=backbone, pseudo_files=pseudo_files,
                                    pseudo_weight=weight if use else 1.0, init_weights=init, strategy=job.strategy,
                                    plan=job.plan)
    block = pseudo_label_block(pl_stats, weight, use) if pl_stats is not None else None
    if block is not None:
        block["init"] = {"from": "base" if init != start["model"] else "last blessed model", "model": init,
                         "variables": len(backbones.saved_backbone_names(init, backbones.CLASSIFIER_WEIGHTS_FILE))} \
            if init else {"from": "scratch" if backbone is None else "warm start (backbone)"}
    summary = {"plan": plan, "inline_ssp": ssp_summary, "pseudo_labels": block,
               "training_files": {"labeled": list(job.train_files), "pseudo_labeled": list(pseudo_files or [])}}
    if train_cfg is not job.train:  # semi.pseudo_label.final_epochs: the summary records what was trained
        summary.update(epochs=train_cfg.epochs, config=dataclasses.asdict(train_cfg))
    return toolkit.TrainResult(model, history, train_stats["num_examples"] * train_cfg.epochs, train_stats,
                               backbone_weights=backbone, summary=summary)


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
