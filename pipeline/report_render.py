"""report.md and the console table of a classification run, read from its metrics.json (pipeline/report_blocks.py);
and the text helpers both tasks' reports share (numbers, the gate's decision, where the model was pushed, the console summary).

Text only: the figures are pipeline/report_plots.py's. Pure Python, no TensorFlow.
"""

from __future__ import annotations

from models import modes, planner
from pipeline.report_gate import gate_md


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def pushed_text(metrics: dict, quote: str = "") -> str:
    if not metrics["pushed"]:
        return "no"
    where = f"{quote}{metrics['pushed_model_dir']}{quote}"
    return f"{where} (already serving: this identical model was pushed before, nothing copied)" if metrics.get(
        "already_serving") else where


def gate_line(metrics: dict) -> str:
    """The console's last line, any task: the gate's decision (the failed checks, when not blessed) and the push."""
    failed = [c for c in metrics["gate"]["checks"] or [] if not c["passed"]]
    decision = "BLESSED" if metrics["blessed"] else "NOT BLESSED: " + "; ".join(
        f"{c['check']} ({fmt(c['value'])} vs {fmt(c['threshold'])}{', ' + c['detail'] if c['detail'] else ''})" for c in failed)
    return f"gate: {decision}; pushed: {pushed_text(metrics)}"


GAP = (" ", "", lambda row: " ")  # a console column that is one space


def console(columns, rows: list[dict], summary: list[str], metrics: dict) -> str:
    """A task's console summary, any task: its table (``columns``: (title, format spec, cell of a row)), its
    summary lines, then the gate's line."""
    lines = ["".join(f"{title:{spec}}" for title, spec, _ in columns)]
    lines += ["".join(f"{cell(r):{spec}}" for _, spec, cell in columns) for r in rows]
    return "\n".join([*lines, *summary, gate_line(metrics)])


def confusion_matrix(metrics: dict) -> list | None:
    """The test split's confusion matrix (rows: true class), None when the run has none."""
    return (metrics.get("test") or {}).get("confusion_matrix") or None


def _ingestion_note(data: dict) -> str:
    """report.md's sentence on a user's own data: ingested by the pipeline, and the files that are not images; and
    where the validation split came from when the source gave its own."""
    given = data.get("validation_source") or ""
    note = f" Validation split: {given}." if given.startswith("the source's own") else ""
    if data.get("ingestion") != "OwnDataExampleGen":
        return note
    n = data.get("non_image_files") or 0
    hidden = data.get("hidden_files") or 0
    note += (" Ingested by OwnDataExampleGen from the source this run; "
             + (f"{n} file{'s' if n != 1 else ''} that {'are' if n != 1 else 'is'} not an image skipped "
                "(listed in the ExampleGen's ingest_report.json)" if n else "no file that is not an image")
             + (f"; {hidden} hidden or system file{'s' if hidden != 1 else ''} skipped (.DS_Store, ._*, Thumbs.db, "
                "...)." if hidden else "."))
    for problem, entry in (data.get("skipped_files") or {}).items():
        note += (f" Skipped under data.bad_files=skip: {entry['count']} ({problem}), e.g. "
                 f"{', '.join(entry['samples'][:3])}.")
    spans = spans_text(data.get("spans"))
    return note + _fit_note(data.get("image_fit")) + (f" Spans {spans}." if spans else "")


def spans_text(spans: dict | None) -> str:
    """A root of span-N/ folders, in words (report.md's sentence, check's data line): the setting, the spans read,
    and what the older ones gave; "" for a root without spans."""
    if not spans:
        return ""
    per = spans["per_span"]
    older = [s for s in per if not s["newest"]]
    newest = per[-1]
    text = (f"(data.spans={spans['setting']}, {spans['available']} span{'s' if spans['available'] != 1 else ''} "
            f"there): read {', '.join(f'span-{n}' for n in spans['read'])}; validation (the gate) and test from the "
            f"newest, span-{newest['span']} ({newest['validation']} and {newest['test']} images)")
    if older:
        unused = sum(s["not_used"]["test"] + s["not_used"]["validation"] for s in older)
        text += (f"; the older spans gave {sum(s['labeled'] for s in older)} labeled and "
                 f"{sum(s['unlabeled'] for s in older)} pool images, their {unused} test and validation images not used")
    return text


def _backbone_text(metrics: dict, cfg: dict) -> str:
    choice = metrics.get("backbone") or {}
    if choice.get("setting") == "auto":
        return f"{cfg['train']['backbone']} (train.backbone=auto: {choice['reason']})"
    return cfg["train"]["backbone"]


_FIT_HOW = {"resize": "resized to it (aspect ratio not kept, as Keras's image_dataset_from_directory)",
            "crop": "centre-cropped to its aspect ratio, then resized", "pad": "resized to fit, then zero-padded"}


def _fit_note(fit: dict | None) -> str:
    """report.md's sentence on the one image size: what was chosen, why, and what it did to how many images."""
    if not fit:
        return ""
    conversions = ", ".join(f"{v} {k.removeprefix('converted ')}" for k, v in (fit.get("conversions") or {}).items())
    return (f" Images fitted to {fit['height']}x{fit['width']}x{fit['channels']} ({fit['reason']}): each "
            f"{_FIT_HOW[fit['method']]}, EXIF orientation applied, alpha dropped; {fit.get('resized', 0)} resized, "
            f"{fit.get('converted', 0)} converted{f' ({conversions})' if conversions else ''}, "
            f"{fit.get('exif_rotated', 0)} turned upright.")


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


def _calibration_md(metrics: dict) -> list[str]:
    cal = metrics.get("calibration") or {}
    if cal.get("method", "none") == "none":
        return []
    names = metrics["label_stats"]["class_names"]
    raw = cal.get("test_uncalibrated") or {}
    lines = ["## Calibration (per-class logit offsets)", "",
             f"Fitted on {cal['fit_examples']} validation images ({cal['halves']}); the gate judged the other "
             f"{cal.get('gate_num_examples')}. Objective (balanced accuracy + {cal['settings']['worst_class_weight']:g} x "
             f"worst-class recall) on the fit half: {fmt(cal['objective_before'], 4)} -> {fmt(cal['objective_after'], 4)}."]
    if raw:
        lines.append(f"Test without the offsets: balanced accuracy {fmt(raw.get('balanced_accuracy'), 4)}, worst class "
                     f"{names[raw['worst_class']] if raw.get('worst_class') is not None else '-'} "
                     f"{fmt(raw.get('worst_class_recall'))}; with them (served): {fmt(metrics['balanced_accuracy'], 4)}, "
                     f"{metrics['worst_class']} {fmt(metrics['worst_class_recall'])}.")
    lines += ["", "| class | offset | fit-half recall before | after | test recall without | with |", "|---|---|---|---|---|---|"]
    test = metrics.get("per_class_recall") or [None] * len(names)
    raw_recall = raw.get("per_class_recall") or [None] * len(names)
    for c, name in enumerate(names):
        lines.append(f"| {name} | {cal['offsets'][c]:+.2f} | {fmt(cal['recall_before'][c])} | {fmt(cal['recall_after'][c])} "
                     f"| {fmt(raw_recall[c])} | {fmt(test[c])} |")
    return lines + [""]


def _final_epochs(metrics: dict, cfg: dict) -> str:
    """The final model's epochs: what its Trainer trained (semi.pseudo_label.final_epochs may differ from train.epochs),
    and the base model's when one pseudo-labelled the pool."""
    trained = (metrics.get("training") or {}).get("epochs") or cfg["train"]["epochs"]
    if not metrics.get("pseudo_labels"):
        return f"{trained} epochs"
    warm_base = ((metrics.get("warm_start") or {}).get("base_trainer") or {}).get("epochs")  # a warm base: its own
    base = warm_base or cfg["semi"]["pseudo_label"].get("base_epochs") or cfg["train"]["epochs"]
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
               f"Estimated pool: relevance {fmt(pl['estimated_relevance'])} ({pl['relevance_score']}"
               f"{', ' + pl['relevance_estimator'].replace('_', '-') if pl.get('relevance_estimator') else ''}), "
               f"rho_U {fmt(pl['estimated_rho_u'], 1)} ({pl['class_distribution_method']}; raw counts "
               f"{fmt(pl['raw_rho_u'], 1)}).", "",
               *_init_md(pl.get("init")), *_prior_md(pl.get("prior_adjustment")),
               "| class | predicted | accepted | estimated pool share | EM-BCTS prior [95% interval] |",
               "|---|---|---|---|---|"]
        dist = pl.get("estimated_class_distribution") or [None] * len(names)
        prior = pl.get("prior_adjustment") or {}
        em = [f"{q:.3f} [{lo:.3f}, {hi:.3f}]" for q, (lo, hi) in zip(prior["prior"], prior["interval"])] \
            if prior.get("method") == "em_bcts" else ["-"] * len(names)
        for c, name in enumerate(names):
            md.append(f"| {name} | {pl['per_class_predicted'][c]} | {pl['per_class_accepted'][c]} | {fmt(dist[c])} | "
                      f"{em[c]} |")
        md.append("")
    return md


def _prior_md(prior: dict | None) -> list[str]:
    """What semi.pseudo_label.prior did to the pseudo-labels."""
    if not prior or prior.get("setting", "none") == "none":
        return []
    if prior.get("method") != "em_bcts":
        return [f"Prior adjustment {prior['setting']}: not applied ({prior.get('reason')}).", ""]
    note = "" if prior["interval_covers"] else (
        f" The interval is too narrow: the validation split has {min(prior['validation_per_class'])} images in its "
        "smallest class, where the bootstrap under-covers (docs/semi-supervised.md).")
    strength = "" if prior.get("strength", 1.0) == 1.0 else f" with strength {prior['strength']:g}"
    return [f"Prior adjustment em_bcts: BCTS on {sum(prior['validation_per_class'])} validation images (temperature "
            f"{prior['temperature']:.2f}), EM on {prior['pool_examples']} pool images ({prior['iterations']} "
            f"iterations); each pool image is labeled by its posterior adjusted to the estimated prior{strength} (per class "
            f"below, with {prior['level']:.0%} bootstrap intervals of {prior['resamples']} resamples).{note}", ""]


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
            md.append(f"| {stats['class_names'][c]} | {stats['class_counts'][c]} | {fmt(semi['pseudo_label_recall'][c])} | "
                      f"{fmt(semi['pseudo_label_precision'][c])} | {fmt(semi['mask_rate'][c])} |")
        md += ["", "| epoch | pool pseudo-label accuracy | mask rate |", "|---|---|---|"]
        md += [f"| {e['epoch']} | {fmt(e['accuracy'])} | {fmt(e['overall_mask_rate'])} |" for e in semi["per_epoch"]]
    return md + [""]


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


CONSOLE_COLUMNS = (("class", "<14", lambda r: r["class"][:13]), ("id", ">3", lambda r: r["id"]),
                   ("train", ">7", lambda r: r["train"]), GAP, ("group", "<7", lambda r: r["group"]),
                   ("val rec", ">8", lambda r: fmt(r["val_recall"])), ("test rec", ">9", lambda r: fmt(r["test_recall"])),
                   ("test prec", ">10", lambda r: fmt(r["test_precision"])))


def console_table(metrics: dict) -> str:
    summary = [f"balanced accuracy {fmt(metrics['balanced_accuracy'], 4)}  macro-F1 {fmt(metrics['macro_f1'], 4)}  "
               f"many {fmt(metrics['many_shot_accuracy'])} medium {fmt(metrics['medium_shot_accuracy'])} "
               f"few {fmt(metrics['few_shot_accuracy'])}  (test split)"]
    ssp = metrics.get("ssp") or {}
    if ssp.get("method", "none") != "none":
        summary.append(f"self-supervised pre-training: {ssp['method']} ({ssp['data']}, {ssp['epochs']} epochs), final loss "
                       f"{fmt(ssp['final_loss'], 4)}, linear probe {fmt(ssp['linear_probe_accuracy'])} "
                       f"(random init {fmt(ssp['random_init_probe_accuracy'])})")
    plan = metrics.get("plan") or {}
    if plan.get("choice"):
        summary.append(f"plan (semi.method={plan['semi']}): {plan['choice']}, trained with {plan['trained_with']}. "
                       f"{planner.explain(plan)}")
    return console(CONSOLE_COLUMNS, per_class_rows(metrics), summary, metrics)


def top_confusions(metrics: dict, k: int = 3) -> list[str]:
    """The k largest off-diagonal shares of the test confusion matrix, as 'shirt -> t-shirt/top 0.21'."""
    cm = confusion_matrix(metrics)
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
    if (training or {}).get("mixed_precision_reason"):  # train.mixed_precision=auto: what it resolved to and why
        precision += f" [{training['mixed_precision_reason']}]"
    if d.get("strategy", "none") == "none":
        return f"one process, {precision}" + (f" ({d['reason']})" if d.get("reason") else "")
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


def test_time_flip_text(cfg: dict) -> str:
    """train.test_time_flip as the run resolved it (a run from before it existed served without one)."""
    if cfg["train"].get("test_time_flip", "off") != "on":
        return "off"
    return "on (served and calibrated logits: the mean of the image's and its mirror image's)"


def ssp_section(ssp: dict) -> list[str]:
    md = ["## Self-supervised pre-training", ""]
    if ssp["method"] == "none":
        return md + [ssp["note"] + ".", ""]
    warm = ssp.get("warm_start") or {}
    md += [f"Method **{ssp['method']}**, run by {ssp.get('run_by', 'SSPPretrainer')}, on the {ssp['data']} images "
           f"(labels not read), {ssp['epochs']} epochs of "
           f"{ssp.get('steps_per_epoch')} steps over {ssp.get('num_examples')} images; final pretext loss "
           f"{fmt(ssp['final_loss'], 4)}, pretext accuracy {fmt(ssp.get('final_pretext_accuracy'))}; "
           f"{fmt(ssp.get('pretrain_seconds'), 1)} s ({fmt(ssp.get('images_per_second'), 0)} images/s).", "",
           f"Pre-trained in {distribute_text(ssp)}.", "",
           f"Linear probe ({ssp['probe']}): pre-trained backbone {fmt(ssp['linear_probe_accuracy'])}, random initial "
           f"weights {fmt(ssp['random_init_probe_accuracy'])}.", "",
           f"Warm start of the supervised Trainer: {warm.get('variables', '-')} backbone variables loaded (all of them; "
           "a missing or unexpected one stops the run), fresh classifier head.", ""]
    if ssp.get("history"):
        md += ["![pre-training loss](ssp_loss.png)", ""]
    return md


def shift_md(shift: dict | None, class_names: list[str]) -> list[str]:
    """report.md's shift section (models/shift.py): per class, the reference, newest labeled and estimated pool shares."""
    if not shift:
        return []
    pool = shift.get("pool") or {}
    md = ["", "## Shift (the newest data against the last blessed model's training data)", "",
          f"Reference: {shift['reference']['source']}. Newest labeled: {shift['newest_labeled']['source']}, "
          f"L1 {fmt(shift['newest_labeled']['l1'])}. Pool: "
          + (f"{pool['pool_examples']} images, class shares estimated by {pool['method']} (the model's predictions "
             f"corrected for its own confusion, fitted on {sum(pool['validation_per_class'])} validation images"
             + ("" if pool.get("interval_covers") else "; fewer than 20 a class: the intervals are too narrow")
             + f"), L1 {fmt(pool['l1'])}" if pool.get("shares") else pool.get("reason", "none"))
          + f". Threshold L1 {shift['max_l1']:g} (gate.max_class_shift_l1).", ""]
    md += [f"**{m}.**" for m in shift["messages"]] or ["No class shift beyond the threshold."]
    md += ["", "| class | reference share | newest labeled share | pool share (estimated) | pool 95% interval |",
           "|---|---|---|---|---|"]
    for c, name in enumerate(class_names):
        iv = (pool.get("interval") or [None] * len(class_names))[c]
        md.append(f"| {name} | {fmt(shift['reference']['shares'][c])} | {fmt(shift['newest_labeled']['shares'][c])} | "
                  f"{fmt(pool['shares'][c]) if pool.get('shares') else '-'} | "
                  f"{f'[{fmt(iv[0])}, {fmt(iv[1])}]' if iv else '-'} |")
    return md


def warm_start_text(block: dict | None) -> str:
    """report.md's retraining line: each Trainer's start (models/retrain.py), or nothing when none recorded one."""
    stages = [(name, (block or {}).get(key)) for name, key in (("Base model", "base_trainer"), ("Model", "trainer"))]
    stages = [(name, d) for name, d in stages if d]
    if not stages:
        return ""
    return f"Warm start (train.warm_start={block['setting']}): " + "; ".join(
        f"{name.lower() if i else name}: {d['reason']}" for i, (name, d) in enumerate(stages)) + "."


def report_md(metrics: dict) -> str:
    """report.md: the data, the gate, the per-class table and figures, calibration, SSP, semi-supervised training and time."""
    ssp = metrics.get("ssp") or {"method": "none", "note": "no self-supervised pre-training"}
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
          f"Training: {_backbone_text(metrics, cfg)}, loss {cfg['train']['loss']}, {_final_epochs(metrics, cfg)}, "
          f"batch {cfg['train']['batch_size']}, seed {metrics['seed']}, augmentation {augmentation_text(cfg)}, "
          f"test-time flip {test_time_flip_text(cfg)}; "
          f"trainer: {distribute_text(metrics.get('training'))}; "
          f"self-supervised pre-training: {ssp['method']}; "
          f"semi-supervised: {metrics['semi']['method']}"
          + (f" (trained with {metrics['plan']['trained_with']})" if (metrics.get("plan") or {}).get("choice") else "")
          + ".", "",
          *([warm_start_text(metrics.get("warm_start")), ""] if warm_start_text(metrics.get("warm_start")) else []),
          "## Gate (validation split" + (", the half calibration did not fit on" if (metrics.get("calibration") or {})
                                         .get("method", "none") != "none" else "") + ")", "",
          f"Decision: **{'BLESSED' if metrics['blessed'] else 'NOT BLESSED'}**; pushed: {pushed_text(metrics, '`')}.", "",
          *gate_md(gate, stats["class_names"]), *shift_md(metrics.get("shift"), stats["class_names"])]
    md += ["", "## Per class (ranked by training count)", "",
           f"Test split: balanced accuracy {fmt(metrics['balanced_accuracy'], 4)}, macro-F1 {fmt(metrics['macro_f1'], 4)}, "
           f"many {fmt(metrics['many_shot_accuracy'])}, medium {fmt(metrics['medium_shot_accuracy'])}, "
           f"few {fmt(metrics['few_shot_accuracy'])}.", "",
           "| class | id | train | group | val recall | test recall | test precision |", "|---|---|---|---|---|---|---|"]
    for r in per_class_rows(metrics):
        md.append(f"| {r['class']} | {r['id']} | {r['train']} | {r['group']} | {fmt(r['val_recall'])} | "
                  f"{fmt(r['test_recall'])} | {fmt(r['test_precision'])} |")
    md += ["", "![training count vs test recall](per_class.png)", ""]
    if confusion_matrix(metrics):  # report_plots.plot_confusion draws confusion.png then
        md += ["Largest confusions (share of the true class's test images taken by another class): "
               + "; ".join(top_confusions(metrics)) + ".", "", "![test confusion matrix](confusion.png)", ""]
    md += _calibration_md(metrics)
    md += ssp_section(ssp)
    md += _semi_md(metrics)
    md += ["## Time", "",
           f"Pipeline wall time {t['pipeline_seconds']:.1f} s: training {fmt(t.get('train_seconds'), 1)} s, "
           f"pre-training {fmt(t.get('pretrain_seconds'), 1)} s{' (cached)' if t.get('pretrain_cached') else ''}, "
           f"everything else {fmt(t.get('other_seconds'), 1)} s.", ""]
    if (metrics.get("beam") or {}).get("reason"):
        md += [f"Beam: {metrics['beam']['reason']}.", ""]
    md += components_md(t)
    history = (metrics.get("training") or {}).get("history") or []
    if history:
        md += ["| epoch | loss | train accuracy | seconds |", "|---|---|---|---|"]
        md += [f"| {h['epoch']} | {fmt(h.get('loss'), 4)} | {fmt(h.get('accuracy'), 4)} | {h['seconds']:.1f} |"
               for h in history]
    return "\n".join(md) + "\n"


def components_md(timings: dict) -> list[str]:
    """The run's components with their seconds and final state (MLMD), in the order they started."""
    rows = timings.get("components") or []
    if not rows:
        return []
    return ["| component | state | seconds |", "|---|---|---|",
            *[f"| {r['component']} | {r['state'].lower()} | {r['seconds']:.1f} |" for r in rows], ""]
