"""The classification run's metrics.json blocks, computed from the pipeline's results; no text, no figures.

Each ``*_block`` is one key of metrics.json (pipeline/report.py assembles them inside the run envelope,
pipeline/report_envelope.py); pipeline/report_render.py writes them as report.md and the console table.
Pure Python: the training mode arrives resolved (models.modes.TrainingMode), nothing here loads TensorFlow.
"""

from __future__ import annotations

from models import planner
from models.modes import TrainingMode
from models.pseudo_label_stats import pseudo_label_block


def unlabeled_block(manifest: dict) -> dict:
    """metrics.json's ``unlabeled``: the pool's size, and what an empty one means for the run."""
    unlabeled = manifest["splits"]["unlabeled"]["num_examples"]
    return {"examples": unlabeled,
            "note": "unlabeled pool validated and counted" if unlabeled else
            "unlabeled pool is empty: supervised-only run, unlabeled branch skipped"}


def data_block(manifest: dict, data_dir: str, ingested: dict) -> dict:
    """metrics.json's ``data``: where the images came from (prepare-data's ``manifest``), how they were ingested, the
    duplicates across splits (``ingested``: OwnDataExampleGen's account, else the manifest) and each split's counts."""
    return {"data_dir": data_dir, "source": manifest["source"], "rho": manifest["rho"], "rho_u": manifest["rho_u"],
            "seed": manifest["seed"], "class_order": manifest["class_order"],
            "ingestion": manifest.get("ingestion", "prepare-data"), "non_image_files": manifest.get("non_image_files"),
            "duplicates_across_splits": ingested.get("duplicates_across_splits"),
            "duplicate_examples": ingested.get("duplicate_examples"),
            "validation_source": manifest.get("validation_source"),
            # a user's own images: how they were fitted to one size (the plan's choice and reason, the ingestion's
            # counts), the hidden files and the bad files skipped (data.bad_files=skip)
            "image_fit": _image_fit(manifest, ingested), "hidden_files": manifest.get("hidden_files"),
            "hidden_file_samples": manifest.get("hidden_file_samples"),
            "skipped_files": ingested.get("skipped_files"),
            # a root of span-N/ folders: the spans read when the run ingested them (components/data/spans.py)
            "spans": ingested.get("spans") or manifest.get("spans"),
            "splits": {k: {kk: vv for kk, vv in v.items() if kk != "files"} for k, v in manifest["splits"].items()}}


def _image_fit(manifest: dict, ingested: dict) -> dict | None:
    planned = manifest.get("image_fit")
    if not planned:
        return None
    done = ingested.get("image_fit") or {}
    return {**planned, **{k: done[k] for k in ("resized", "converted", "conversions", "exif_rotated") if k in done}}


CALIBRATION_KEYS = ("method", "settings", "test_time_flip", "halves", "fit_examples", "fit_support", "offsets",
                    "offsets_by_class", "objective_before", "objective_after", "recall_before", "recall_after", "sweeps",
                    "classes_without_fit_examples")


def calibration_block(training: dict | None, ev: dict) -> dict:
    """metrics.json's ``calibration``: the offsets fitted on the eval split's fit half (models/calibration.py), what they
    did there, the half the gate judged, and the test split without them (the Evaluator's ``uncalibrated``)."""
    fitted = (training or {}).get("calibration")
    if not fitted:
        return {"method": "none", "note": "no calibration: the served logits are the model's (plus any "
                "post_hoc_logit_adjust_tau offset) and the gate judges the whole eval split"}
    block = {k: fitted.get(k) for k in CALIBRATION_KEYS}
    block["gate_examples"] = ev.get("eval_examples")
    block["gate_num_examples"] = (ev.get("candidate") or {}).get("num_examples")
    raw = (ev.get("report") or {}).get("uncalibrated")
    block["test_uncalibrated"] = None if raw is None else {k: raw.get(k) for k in (
        "balanced_accuracy", "per_class_recall", "per_class_precision", "worst_class", "worst_class_recall",
        "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")}
    return block


SEMI_KEYS = ("method", "pseudo_label_recall", "pseudo_label_precision", "mask_rate", "threshold", "warmup_steps",
             "warmup_rule", "dist_temperature", "dist_temperature_reason", "total_steps", "labeled_batch", "unlabeled_batch",
             "labeled_loss", "evaluated_model", "pool_scoring", "queue_filled_per_class", "settings")


def semi_block(training: dict | None, mode: TrainingMode) -> dict:
    """metrics.json's ``semi``: the pseudo-labels' per-class recall, precision and mask rate on the pool (last
    epoch, against the evaluation-only true classes), the threshold and the DASO warm-up. For semi=pseudo_label
    or auto: the setting and what the final Trainer trained with (details in ``plan`` and ``pseudo_labels``).
    ``mode`` is the run's training mode (semi.method resolved)."""
    summary = (training or {}).get("semi")
    plan = (training or {}).get("plan")
    if plan:
        return {"method": plan["semi"], "trained_with": plan["trained_with"],
                "note": f"semi.method={plan['semi']}: trained with {plan['trained_with']} (see plan and pseudo_labels)"}
    if not summary:
        return {"method": mode.name, "note": f"no semi-supervised training (semi.method={mode.name})"}
    block = {k: summary.get(k) for k in SEMI_KEYS}
    block["per_epoch"] = [{k: h.get(k) for k in ("epoch", "accuracy", "overall_mask_rate", "pseudo_label_counts")}
                          for h in summary.get("pool_history") or []]
    return block


def plan_block(training: dict | None, mode: TrainingMode) -> dict:
    """metrics.json's ``plan``: the data-aware planner's {choice, reasons, estimates} (models/planner.py), the
    setting (semi) and what the final Trainer trained with; a note when the run's ``mode`` does not plan."""
    plan = (training or {}).get("plan")
    if plan:
        return plan
    return {"choice": None, "reasons": [], "estimates": None, "semi": mode.name,
            "reasons_text": [f"planner not run: semi.method={mode.name} (semi.method=auto lets it choose)"],
            "trained_with": mode.name if mode.online_pool else planner.SUPERVISED}


def warm_start_block(cfg_dict: dict, training: dict | None, base_training: dict | None) -> dict:
    """metrics.json's ``warm_start``: train.warm_start, and each classification Trainer's decision (models/retrain.py:
    warm from the last blessed model or scratch, why, its epochs against the from-scratch ones)."""
    stages = {"trainer": (training or {}).get("retrain"), "base_trainer": (base_training or {}).get("retrain")}
    return {"setting": cfg_dict["train"]["warm_start"], "epochs_setting": cfg_dict["train"]["warm_start_epochs"],
            **{k: v for k, v in stages.items() if v}}


def pseudo_labels_block(training: dict | None, pl_stats: dict | None, weight: float, examples_uri: str | None = None,
                        base_model_uri: str | None = None) -> dict | None:
    """metrics.json's ``pseudo_labels``: threshold, per-class predicted / accepted counts and the pool estimates
    (None when no PseudoLabeler ran), and where the pseudo-labeled examples and the base model are; ``weight`` is
    semi.pseudo_label.weight, for a Trainer summary without the block."""
    block = (training or {}).get("pseudo_labels")
    if not block and pl_stats:  # a final Trainer cached from a run without the block: read the statistics
        block = pseudo_label_block(pl_stats, weight, None)
    if not block:
        return None
    return {**block, "examples_uri": examples_uri, "base_model_uri": base_model_uri}


def ssp_block(cfg_dict: dict, summary: dict | None, training: dict | None) -> dict:
    """metrics.json's ``ssp``, the self-supervised pre-training: what ran, on which images, how its features probe."""
    p = cfg_dict["pretrain"]
    inline = (training or {}).get("inline_ssp")
    run_by = "SSPPretrainer"
    if p["method"] == "none" and inline:  # the planner chose SSP: the final Trainer pre-trained (models.pseudo_label)
        summary, p = inline, {"method": inline["method"], "data": inline["data"]}
        run_by = "the final Trainer (the planner chose SSP)"
    elif p["method"] == "none":
        return {"method": "none", "epochs": 0, "data": None, "final_loss": None, "linear_probe_accuracy": None,
                "random_init_probe_accuracy": None,
                "note": "no self-supervised pre-training (pretrain.method=none): the backbone starts from random weights"}
    s = summary or {}
    keep = ("steps_per_epoch", "num_examples", "final_pretext_accuracy", "pretrain_seconds", "images_per_second",
            "resolved", "queue_size", "backbone_variables", "distribute", "history")
    return {"method": p["method"], "epochs": s.get("epochs"), "data": p["data"], "final_loss": s.get("final_loss"),
            "linear_probe_accuracy": s.get("linear_probe_accuracy"),
            "random_init_probe_accuracy": s.get("random_init_probe_accuracy"),
            **{k: s.get(k) for k in keep},
            "warm_start": (training or {}).get("warm_start"),
            "run_by": run_by,
            "probe": "logistic regression on frozen features of the balanced validation split, half of each class to "
                     "fit, the other half to score; the same for the backbone's random initial weights"}
