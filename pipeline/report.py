"""metrics.json, report.md and the per-class plot of a run; and the console table."""

from __future__ import annotations

import json
import os

from models import modes, planner
from models.pseudo_label import pseudo_label_block
from pipeline.report_gate import gate_block, gate_md


def _ingestion_note(data: dict) -> str:
    """report.md's sentence on a user's own data: ingested by the pipeline, and the files that are not images; and
    where the validation split came from when the source gave its own."""
    given = data.get("validation_source") or ""
    note = f" Validation split: {given}." if given.startswith("the source's own") else ""
    if data.get("ingestion") != "OwnDataExampleGen":
        return note
    n = data.get("non_image_files") or 0
    return note + (" Ingested by OwnDataExampleGen from the source this run; "
            + (f"{n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not an image skipped "
               "(listed in the ExampleGen's ingest_report.json)." if n else "no file that is not an image."))


def duplicates_warning(data: dict) -> list[str]:
    """report.md's data-section lines on images found in two splits: a loud warning when a training or validation
    image is also a test image (the test score is then not on unseen images)."""
    dups = data.get("duplicates_across_splits")
    if dups is None:
        return []
    if not dups:
        return ["Duplicates across splits: none (pixel-identical images compared across every pair of splits)."]
    examples = data.get("duplicate_examples") or {}
    def sample(pairs):  # prepare-data's are record indices; OwnDataExampleGen's are file / record locators
        indices = all(isinstance(p, (list, tuple)) and all(isinstance(i, int) for i in p) for p in pairs)
        return f" (e.g. {'records ' if indices else ''}{pairs})"

    text = "; ".join(f"{pair}: {n}" + (sample(examples[pair]) if examples.get(pair) else "")
                     for pair, n in sorted(dups.items()))
    test = sum(n for pair, n in dups.items() if "test" in pair.split("/"))
    lines = [f"Duplicates across splits (pixel-identical images): {text}."]
    if test:
        lines.insert(0, f"**WARNING: {test} test image{'s are' if test != 1 else ' is'} also in another split: the test "
                        "score is contaminated by images the model saw or was selected on.**")
    return lines


def build_metrics(cfg_dict: dict, manifest: dict, data_dir: str, results: dict, timings: dict) -> dict:
    ev = results["evaluation"] or {}
    test = ev.get("report") or {}
    stats = results["label_stats"] or {}
    unlabeled = manifest["splits"]["unlabeled"]["num_examples"]
    ingested = results.get("ingest_report") or manifest  # OwnDataExampleGen's account, else prepare-data's manifest
    return {
        # the headline numbers: the candidate on the balanced test split
        "split": ev.get("report_split"),
        "balanced_accuracy": test.get("balanced_accuracy"),
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "per_class_recall": test.get("per_class_recall"),
        "per_class_precision": test.get("per_class_precision"),
        "many_shot_accuracy": test.get("many_shot_accuracy"),
        "medium_shot_accuracy": test.get("medium_shot_accuracy"),
        "few_shot_accuracy": test.get("few_shot_accuracy"),
        "worst_class": None if test.get("worst_class") is None else stats["class_names"][test["worst_class"]],
        "worst_class_recall": test.get("worst_class_recall"),
        "blessed": ev.get("blessed"),
        "pushed": results["pushed"],
        "pushed_model_dir": results["pushed_model_dir"],
        "already_serving": results.get("already_serving", False),  # identical model already pushed: nothing copied
        "gate": gate_block(ev),
        "calibration": calibration_block(results["training"], ev),
        "test": test,
        "label_stats": stats,
        "unlabeled": {"examples": unlabeled,
                      "note": "unlabeled pool validated and counted" if unlabeled else
                      "unlabeled pool is empty: supervised-only run, unlabeled branch skipped"},
        "data": {"data_dir": data_dir, "source": manifest["source"], "rho": manifest["rho"], "rho_u": manifest["rho_u"],
                 "seed": manifest["seed"], "class_order": manifest["class_order"],
                 "ingestion": manifest.get("ingestion", "prepare-data"), "non_image_files": manifest.get("non_image_files"),
                 "duplicates_across_splits": ingested.get("duplicates_across_splits"),
                 "duplicate_examples": ingested.get("duplicate_examples"),
                 "validation_source": manifest.get("validation_source"),
                 "splits": {k: {kk: vv for kk, vv in v.items() if kk != "files"} for k, v in manifest["splits"].items()}},
        "semi": semi_block(results["training"], cfg_dict),
        "plan": plan_block(results["training"], cfg_dict),
        "pseudo_labels": pseudo_labels_block(results["training"], results.get("pseudo_label_stats"), cfg_dict,
                                             results.get("pseudo_labeled_examples_uri"), results.get("base_model_uri")),
        "seed": cfg_dict["train"]["seed"],
        "config": cfg_dict,
        "training": results["training"],
        "ssp": ssp_block(cfg_dict, results.get("ssp"), results["training"]),
        "timings": timings,
        "run_id": results["run_id"],
        "executions": results["executions"],
        "model_run_dir": results["model_run_dir"],
    }


CALIBRATION_KEYS = ("method", "settings", "halves", "fit_examples", "fit_support", "offsets", "offsets_by_class",
                    "objective_before", "objective_after", "recall_before", "recall_after", "sweeps",
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


def _calibration_md(metrics: dict) -> list[str]:
    cal = metrics.get("calibration") or {}
    if cal.get("method", "none") == "none":
        return []
    names = metrics["label_stats"]["class_names"]
    raw = cal.get("test_uncalibrated") or {}
    lines = ["## Calibration (per-class logit offsets)", "",
             f"Fitted on {cal['fit_examples']} validation images ({cal['halves']}); the gate judged the other "
             f"{cal.get('gate_num_examples')}. Objective (balanced accuracy + {cal['settings']['worst_class_weight']:g} x "
             f"worst-class recall) on the fit half: {_fmt(cal['objective_before'], 4)} -> {_fmt(cal['objective_after'], 4)}."]
    if raw:
        lines.append(f"Test without the offsets: balanced accuracy {_fmt(raw.get('balanced_accuracy'), 4)}, worst class "
                     f"{names[raw['worst_class']] if raw.get('worst_class') is not None else '-'} "
                     f"{_fmt(raw.get('worst_class_recall'))}; with them (served): {_fmt(metrics['balanced_accuracy'], 4)}, "
                     f"{metrics['worst_class']} {_fmt(metrics['worst_class_recall'])}.")
    lines += ["", "| class | offset | fit-half recall before | after | test recall without | with |", "|---|---|---|---|---|---|"]
    test = metrics.get("per_class_recall") or [None] * len(names)
    raw_recall = raw.get("per_class_recall") or [None] * len(names)
    for c, name in enumerate(names):
        lines.append(f"| {name} | {cal['offsets'][c]:+.2f} | {_fmt(cal['recall_before'][c])} | {_fmt(cal['recall_after'][c])} "
                     f"| {_fmt(raw_recall[c])} | {_fmt(test[c])} |")
    return lines + [""]


def pushed_text(metrics: dict, quote: str = "") -> str:
    if not metrics["pushed"]:
        return "no"
    where = f"{quote}{metrics['pushed_model_dir']}{quote}"
    return f"{where} (already serving: this identical model was pushed before, nothing copied)" if metrics.get(
        "already_serving") else where


SEMI_KEYS = ("method", "pseudo_label_recall", "pseudo_label_precision", "mask_rate", "threshold", "warmup_steps",
             "warmup_rule", "dist_temperature", "dist_temperature_reason", "total_steps", "labeled_batch", "unlabeled_batch",
             "labeled_loss", "evaluated_model", "pool_scoring", "queue_filled_per_class", "settings")


def semi_block(training: dict | None, cfg_dict: dict | None = None) -> dict:
    """metrics.json's ``semi``: the pseudo-labels' per-class recall, precision and mask rate on the pool (last
    epoch, against the evaluation-only true classes), the threshold and the DASO warm-up. For semi=pseudo_label
    or auto: the setting and what the final Trainer trained with (details in ``plan`` and ``pseudo_labels``)."""
    summary = (training or {}).get("semi")
    plan = (training or {}).get("plan")
    if plan:
        return {"method": plan["semi"], "trained_with": plan["trained_with"],
                "note": f"semi.method={plan['semi']}: trained with {plan['trained_with']} (see plan and pseudo_labels)"}
    if not summary:
        method = modes.get(cfg_dict["semi"]["method"]).name if cfg_dict else modes.SUPERVISED
        return {"method": method, "note": f"no semi-supervised training (semi.method={method})"}
    block = {k: summary.get(k) for k in SEMI_KEYS}
    block["per_epoch"] = [{k: h.get(k) for k in ("epoch", "accuracy", "overall_mask_rate", "pseudo_label_counts")}
                          for h in summary.get("pool_history") or []]
    return block


def plan_block(training: dict | None, cfg_dict: dict) -> dict:
    """metrics.json's ``plan``: the data-aware planner's {choice, reasons, estimates} (models/planner.py), the
    setting (semi) and what the final Trainer trained with; a note when the planner did not run."""
    plan = (training or {}).get("plan")
    if plan:
        return plan
    mode = modes.get(cfg_dict["semi"]["method"])
    return {"choice": None, "reasons": [], "estimates": None, "semi": mode.name,
            "reasons_text": [f"planner not run: semi.method={mode.name} (semi.method=auto lets it choose)"],
            "trained_with": mode.name if mode.online_pool else planner.SUPERVISED}


def pseudo_labels_block(training: dict | None, pl_stats: dict | None, cfg_dict: dict, examples_uri: str | None = None,
                        base_model_uri: str | None = None) -> dict | None:
    """metrics.json's ``pseudo_labels``: threshold, per-class predicted / accepted counts and the pool estimates
    (None when no PseudoLabeler ran), and where the pseudo-labeled examples and the base model are."""
    block = (training or {}).get("pseudo_labels")
    if not block and pl_stats:  # a final Trainer cached from a run without the block: read the statistics
        block = pseudo_label_block(pl_stats, cfg_dict["semi"]["pseudo_label"]["weight"], None)
    if not block:
        return None
    return {**block, "examples_uri": examples_uri, "base_model_uri": base_model_uri}


def _final_epochs(metrics: dict, cfg: dict) -> str:
    """The final model's epochs: what its Trainer trained (semi.pseudo_label.final_epochs may differ from train.epochs),
    and the base model's when one pseudo-labelled the pool."""
    trained = (metrics.get("training") or {}).get("epochs") or cfg["train"]["epochs"]
    if not metrics.get("pseudo_labels"):
        return f"{trained} epochs"
    base = cfg["semi"]["pseudo_label"].get("base_epochs") or cfg["train"]["epochs"]
    return f"{trained} epochs (the pseudo-labelling base model {base})"


def _init_md(init: dict | None) -> list[str]:
    """Where the final model started (semi.pseudo_label.init)."""
    if not init:
        return []
    if init.get("from") == "base":
        return [f"The final model started from the base model's weights ({init['variables']} variables, head included; "
                "semi.pseudo_label.init=base), with a fresh optimizer and learning-rate schedule.", ""]
    # init=scratch, or init=base on a run whose final Trainer did not train on the pseudo-labels (the planner's choice)
    return [f"The final model started from {init.get('from')}.", ""]


def _plan_md(metrics: dict) -> list[str]:
    plan, pl = metrics.get("plan") or {}, metrics.get("pseudo_labels")
    if not plan.get("choice"):
        return []
    md = ["## Semi-supervised plan", "", f"**Decision:** {planner.explain(plan)}", "",
          f"Setting semi.method={plan['semi']}; planner's choice **{plan['choice']}**; the final model was trained with "
          f"**{plan['trained_with']}**. Reasons:", ""]
    md += [f"- {r}" for r in plan["reasons_text"]] + [""]
    if pl:
        names = metrics["label_stats"]["class_names"]
        md += [f"Pseudo-labels: confidence threshold {pl['threshold']}, top-k per class {pl['top_k_per_class'] or 'off'}, "
               f"{pl['num_accepted']} of {pl['num_pool_examples']} pool images accepted, weight w={pl['weight']}. "
               f"Estimated pool: relevance {_fmt(pl['estimated_relevance'])} ({pl['relevance_score']}"
               f"{', ' + pl['relevance_estimator'].replace('_', '-') if pl.get('relevance_estimator') else ''}), "
               f"rho_U {_fmt(pl['estimated_rho_u'], 1)} ({pl['class_distribution_method']}; raw counts "
               f"{_fmt(pl['raw_rho_u'], 1)}).", "",
               *_init_md(pl.get("init")),
               "| class | predicted | accepted | estimated pool share |", "|---|---|---|---|"]
        dist = pl.get("estimated_class_distribution") or [None] * len(names)
        for c, name in enumerate(names):
            md.append(f"| {name} | {pl['per_class_predicted'][c]} | {pl['per_class_accepted'][c]} | {_fmt(dist[c])} |")
        md.append("")
    return md


def _semi_md(metrics: dict) -> list[str]:
    semi, stats = metrics["semi"], metrics["label_stats"]
    mode = modes.get(semi["method"])
    if mode.plans:
        return _plan_md(metrics)
    if not mode.online_pool:
        return []
    md = ["## Semi-supervised training", "",
          f"Method **{mode.name}** ({mode.title}): confidence threshold "
          f"{semi['threshold']}, {semi['labeled_batch']} labeled + {semi['unlabeled_batch']} unlabeled images a step, "
          f"{semi['total_steps']} steps, labeled loss {semi['labeled_loss']}; the exported model is the "
          f"{semi['evaluated_model']} copy."]
    if mode.daso:
        md += ["", f"DASO warm-up: {semi['warmup_steps']} steps ({semi['warmup_rule']}); T_dist {semi['dist_temperature']} "
                   f"({semi['dist_temperature_reason']})."]
    md += ["", f"Pseudo-labels on the pool: {semi['pool_scoring']}. Mask rate: share of the class's pool images whose "
               "pseudo-label confidence reaches the threshold (a collapse to 0 is FixMatch's known failure)."]
    if semi.get("pseudo_label_recall"):
        md += ["", "| class | labeled train | pseudo-label recall | precision | mask rate |", "|---|---|---|---|---|"]
        for c in stats["classes_by_frequency"]:
            md.append(f"| {stats['class_names'][c]} | {stats['class_counts'][c]} | {_fmt(semi['pseudo_label_recall'][c])} | "
                      f"{_fmt(semi['pseudo_label_precision'][c])} | {_fmt(semi['mask_rate'][c])} |")
        md += ["", "| epoch | pool pseudo-label accuracy | mask rate |", "|---|---|---|"]
        md += [f"| {e['epoch']} | {_fmt(e['accuracy'])} | {_fmt(e['overall_mask_rate'])} |" for e in semi["per_epoch"]]
    return md + [""]


def ssp_block(cfg_dict: dict, summary: dict | None, training: dict | None) -> dict:
    """The self-supervised pre-training: what ran, on which images, how its features probe."""
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
            "resolved", "queue_size", "backbone_variables", "history")
    return {"method": p["method"], "epochs": s.get("epochs"), "data": p["data"], "final_loss": s.get("final_loss"),
            "linear_probe_accuracy": s.get("linear_probe_accuracy"),
            "random_init_probe_accuracy": s.get("random_init_probe_accuracy"),
            **{k: s.get(k) for k in keep},
            "warm_start": (training or {}).get("warm_start"),
            "run_by": run_by,
            "probe": "logistic regression on frozen features of the balanced validation split, half of each class to "
                     "fit, the other half to score; the same for the backbone's random initial weights"}


def _fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def per_class_rows(metrics: dict) -> list[dict]:
    stats = metrics["label_stats"]
    group_of = {c: g for g, cs in stats["shot_groups"].items() for c in cs}
    val = metrics["gate"]["candidate"] or {}
    rows = []
    for c in stats["classes_by_frequency"]:
        rows.append({"class": stats["class_names"][c], "id": c, "train": stats["class_counts"][c], "group": group_of[c],
                     "val_recall": (val.get("per_class_recall") or [None] * (c + 1))[c],
                     "test_recall": (metrics["per_class_recall"] or [None] * (c + 1))[c],
                     "test_precision": (metrics["per_class_precision"] or [None] * (c + 1))[c]})
    return rows


def console_table(metrics: dict) -> str:
    lines = [f"{'class':<14}{'id':>3}{'train':>7} {'group':<7}{'val rec':>8}{'test rec':>9}{'test prec':>10}"]
    for r in per_class_rows(metrics):
        lines.append(f"{r['class'][:13]:<14}{r['id']:>3}{r['train']:>7} {r['group']:<7}{_fmt(r['val_recall']):>8}"
                     f"{_fmt(r['test_recall']):>9}{_fmt(r['test_precision']):>10}")
    lines.append(f"balanced accuracy {_fmt(metrics['balanced_accuracy'], 4)}  macro-F1 {_fmt(metrics['macro_f1'], 4)}  "
                 f"many {_fmt(metrics['many_shot_accuracy'])} medium {_fmt(metrics['medium_shot_accuracy'])} "
                 f"few {_fmt(metrics['few_shot_accuracy'])}  (test split)")
    failed = [c for c in metrics["gate"]["checks"] or [] if not c["passed"]]
    decision = "BLESSED" if metrics["blessed"] else "NOT BLESSED: " + "; ".join(
        f"{c['check']} ({_fmt(c['value'])} vs {_fmt(c['threshold'])}{', ' + c['detail'] if c['detail'] else ''})" for c in failed)
    ssp = metrics.get("ssp") or {}
    if ssp.get("method", "none") != "none":
        lines.append(f"self-supervised pre-training: {ssp['method']} ({ssp['data']}, {ssp['epochs']} epochs), final loss "
                     f"{_fmt(ssp['final_loss'], 4)}, linear probe {_fmt(ssp['linear_probe_accuracy'])} "
                     f"(random init {_fmt(ssp['random_init_probe_accuracy'])})")
    plan = metrics.get("plan") or {}
    if plan.get("choice"):
        lines.append(f"plan (semi.method={plan['semi']}): {plan['choice']}, trained with {plan['trained_with']}. "
                     f"{planner.explain(plan)}")
    lines.append(f"gate: {decision}; pushed: {pushed_text(metrics)}")
    return "\n".join(lines)


def plot_per_class(metrics: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = per_class_rows(metrics)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [r["class"] for r in rows]
    ax.bar(names, [r["train"] for r in rows], color="#9ab", label="training images")
    ax.set_yscale("log")
    ax.set_ylabel("training images (log)")
    ax.tick_params(axis="x", rotation=45)
    ax2 = ax.twinx()
    ax2.plot(names, [r["test_recall"] if r["test_recall"] is not None else float("nan") for r in rows], "o-", color="#c33",
             label="test recall")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("test recall")
    ax.set_title(f"Training count vs test recall per class (balanced acc {_fmt(metrics['balanced_accuracy'], 3)})")
    fig.tight_layout()
    fig.legend(loc="upper right", bbox_to_anchor=(1, 1), bbox_transform=fig.transFigure, ncols=2, fontsize="small",
               frameon=False)  # above the axes, so it covers no class name or bar
    fig.subplots_adjust(top=0.82)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_confusion(metrics: dict, path: str) -> bool:
    """The test confusion matrix, rows = true class (ranked by training count, head first), each row normalised to
    the class's test images, so which classes take a tail class's images is one row to read. False when absent."""
    cm = (metrics.get("test") or {}).get("confusion_matrix")
    if not cm:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = [r["id"] for r in per_class_rows(metrics)]
    names = [metrics["label_stats"]["class_names"][c] for c in order]
    m = np.asarray(cm, dtype=float)[np.ix_(order, order)]
    rates = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(order)):
        for j in range(len(order)):
            if rates[i, j] >= 0.01:
                ax.text(j, i, f"{rates[i, j]:.2f}".lstrip("0"), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(order)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(order)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (head first)")
    ax.set_title("Test confusion matrix (share of each true class)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def top_confusions(metrics: dict, k: int = 3) -> list[str]:
    """The k largest off-diagonal shares of the test confusion matrix, as 'shirt -> t-shirt/top 0.21'."""
    cm = (metrics.get("test") or {}).get("confusion_matrix")
    if not cm:
        return []
    names = metrics["label_stats"]["class_names"]
    pairs = []
    for i, row in enumerate(cm):
        total = sum(row) or 1
        pairs += [(row[j] / total, i, j) for j in range(len(row)) if j != i and row[j]]
    return [f"{names[i]} -> {names[j]} {share:.2f}" for share, i, j in sorted(pairs, reverse=True)[:k]]


def distribute_text(training: dict | None) -> str:
    """How the Trainer ran (training_summary.json's distribute block): one process, or the strategy and its cluster."""
    d = (training or {}).get("distribute") or {}
    precision = d.get("mixed_precision") or "none"
    precision = "float32" if precision == "none" else f"{precision} (float32 export)"
    if d.get("strategy", "none") == "none":
        return f"one process, {precision}"
    return (f"{d['strategy']}: {d['workers']} worker(s), {d['replicas']} replica(s), global batch "
            f"{d['global_batch_size']} ({d['per_replica_batch_size']} a replica, batch_scaling {d['batch_scaling']}), "
            f"learning rate {d['learning_rate']:g} (lr_scaling {d['lr_scaling']}), data sharding {d['data_sharding']}, "
            f"{precision}")


def augmentation_text(cfg: dict) -> str:
    """train.augment as the run resolved it, and why when it was the source's default (pipeline/configs.py)."""
    ops = cfg["train"].get("augment", "none")
    if isinstance(ops, bool):  # a run from before train.augment was a list
        ops = "crop,flip" if ops else "none"
    if ops == "none":
        return "none"
    return ops.replace(",", " + ") + ("" if "flip" in ops else " (no mirror flip)")


def plot_ssp_loss(ssp: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = ssp["history"]
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="#36c", label="pretext loss")
    ax.set_xlabel("pre-training epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h.get("accuracy", float("nan")) for h in history], "s--", color="#c63", label="pretext accuracy")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("pretext accuracy")
    ax.set_title(f"Self-supervised pre-training ({ssp['method']}, {ssp['data']})")
    fig.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ssp_section(ssp: dict) -> list[str]:
    md = ["## Self-supervised pre-training", ""]
    if ssp["method"] == "none":
        return md + [ssp["note"] + ".", ""]
    warm = ssp.get("warm_start") or {}
    md += [f"Method **{ssp['method']}**, run by {ssp.get('run_by', 'SSPPretrainer')}, on the {ssp['data']} images "
           f"(labels not read), {ssp['epochs']} epochs of "
           f"{ssp.get('steps_per_epoch')} steps over {ssp.get('num_examples')} images; final pretext loss "
           f"{_fmt(ssp['final_loss'], 4)}, pretext accuracy {_fmt(ssp.get('final_pretext_accuracy'))}; "
           f"{_fmt(ssp.get('pretrain_seconds'), 1)} s ({_fmt(ssp.get('images_per_second'), 0)} images/s).", "",
           f"Linear probe ({ssp['probe']}): pre-trained backbone {_fmt(ssp['linear_probe_accuracy'])}, random initial "
           f"weights {_fmt(ssp['random_init_probe_accuracy'])}.", "",
           f"Warm start of the supervised Trainer: {warm.get('variables', '-')} backbone variables loaded (all of them; "
           "a missing or unexpected one stops the run), fresh classifier head.", ""]
    if ssp.get("history"):
        md += ["![pre-training loss](ssp_loss.png)", ""]
    return md


def write_report(metrics: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_per_class(metrics, os.path.join(out_dir, "per_class.png"))
    ssp = metrics.get("ssp") or {"method": "none", "note": "no self-supervised pre-training"}
    if ssp.get("history"):
        plot_ssp_loss(ssp, os.path.join(out_dir, "ssp_loss.png"))
    stats, cfg, gate = metrics["label_stats"], metrics["config"], metrics["gate"]
    t = metrics["timings"]
    md = [f"# Run {metrics['run_id']} ({cfg['preset']} preset)", "",
          f"Data: `{metrics['data']['data_dir']}` ({metrics['data']['source']}, rho={metrics['data']['rho']}, "
          f"rho_u={metrics['data']['rho_u']}, seed {metrics['data']['seed']}). Labeled {stats['num_examples']} examples, "
          f"imbalance ratio {stats['imbalance_ratio']:.1f}. Unlabeled: {metrics['unlabeled']['examples']} "
          f"({metrics['unlabeled']['note']})." + _ingestion_note(metrics["data"]), "",
          *[x for line in duplicates_warning(metrics["data"]) for x in (line, "")],
          f"Shot groups (many >= {stats['shot_thresholds']['many_at_least']:.0f}, few < "
          f"{stats['shot_thresholds']['few_below']:.0f} training images; {stats['shot_thresholds']['source']}): "
          + ", ".join(f"{g}: {[stats['class_names'][c] for c in cs]}" for g, cs in stats["shot_groups"].items()), "",
          f"Training: {cfg['train']['backbone']}, loss {cfg['train']['loss']}, {_final_epochs(metrics, cfg)}, "
          f"batch {cfg['train']['batch_size']}, seed {metrics['seed']}, augmentation {augmentation_text(cfg)}; "
          f"trainer: {distribute_text(metrics.get('training'))}; "
          f"self-supervised pre-training: {ssp['method']}; "
          f"semi-supervised: {metrics['semi']['method']}"
          + (f" (trained with {metrics['plan']['trained_with']})" if (metrics.get("plan") or {}).get("choice") else "")
          + ".", "",
          "## Gate (validation split" + (", the half calibration did not fit on" if (metrics.get("calibration") or {})
                                         .get("method", "none") != "none" else "") + ")", "",
          f"Decision: **{'BLESSED' if metrics['blessed'] else 'NOT BLESSED'}**; pushed: {pushed_text(metrics, '`')}.", "",
          *gate_md(gate, stats["class_names"])]
    md += ["", "## Per class (ranked by training count)", "",
           f"Test split: balanced accuracy {_fmt(metrics['balanced_accuracy'], 4)}, macro-F1 {_fmt(metrics['macro_f1'], 4)}, "
           f"many {_fmt(metrics['many_shot_accuracy'])}, medium {_fmt(metrics['medium_shot_accuracy'])}, "
           f"few {_fmt(metrics['few_shot_accuracy'])}.", "",
           "| class | id | train | group | val recall | test recall | test precision |", "|---|---|---|---|---|---|---|"]
    for r in per_class_rows(metrics):
        md.append(f"| {r['class']} | {r['id']} | {r['train']} | {r['group']} | {_fmt(r['val_recall'])} | "
                  f"{_fmt(r['test_recall'])} | {_fmt(r['test_precision'])} |")
    md += ["", "![training count vs test recall](per_class.png)", ""]
    if plot_confusion(metrics, os.path.join(out_dir, "confusion.png")):
        md += ["Largest confusions (share of the true class's test images taken by another class): "
               + "; ".join(top_confusions(metrics)) + ".", "", "![test confusion matrix](confusion.png)", ""]
    md += _calibration_md(metrics)
    md += ssp_section(ssp)
    md += _semi_md(metrics)
    md += ["## Time", "",
           f"Pipeline wall time {t['pipeline_seconds']:.1f} s: training {_fmt(t.get('train_seconds'), 1)} s, "
           f"pre-training {_fmt(t.get('pretrain_seconds'), 1)} s{' (cached)' if t.get('pretrain_cached') else ''}, "
           f"everything else {_fmt(t.get('other_seconds'), 1)} s.", ""]
    history = (metrics.get("training") or {}).get("history") or []
    if history:
        md += ["| epoch | loss | train accuracy | seconds |", "|---|---|---|---|"]
        md += [f"| {h['epoch']} | {_fmt(h.get('loss'), 4)} | {_fmt(h.get('accuracy'), 4)} | {h['seconds']:.1f} |"
               for h in history]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
