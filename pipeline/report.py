"""A classification run's metrics.json, report.md and figures; and its console table.

The metrics are the run envelope both tasks share (pipeline/report_envelope.py) around this task's headline numbers
and blocks (pipeline/report_blocks.py); report.md and the console table are pipeline/report_render.py's text, the
figures pipeline/report_plots.py's. Nothing on this path imports TensorFlow or tfx (tests/test_layout.py).
"""

from __future__ import annotations

import os

from models.modes import TrainingMode
from pipeline import report_blocks as blocks
from pipeline.report_envelope import run_envelope, write_metrics
from pipeline.report_gate import gate_block
from pipeline.report_plots import plot_confusion, plot_per_class, plot_ssp_loss
from pipeline.report_render import console_table, duplicates_warning, report_md

__all__ = ["build_metrics", "console_table", "duplicates_warning", "write_report"]

HEADLINE_KEYS = ("balanced_accuracy", "accuracy", "macro_f1", "per_class_recall", "per_class_precision",
                 "many_shot_accuracy", "medium_shot_accuracy", "few_shot_accuracy")


def build_metrics(cfg_dict: dict, mode: TrainingMode, manifest: dict, data_dir: str, results: dict,
                  timings: dict) -> dict:
    """metrics.json of a classification run: ``cfg_dict`` is the run's config as a dict, ``mode`` its training mode
    (semi.method resolved, models.modes), ``manifest`` prepare-data's account of ``data_dir``, ``results`` what
    pipeline/local_runner.py read from the run's artifacts."""
    ev = results["evaluation"] or {}
    test = ev.get("report") or {}
    stats = results["label_stats"] or {}
    training = results["training"]
    headline = {k: test.get(k) for k in HEADLINE_KEYS}
    headline["worst_class"] = None if test.get("worst_class") is None else stats["class_names"][test["worst_class"]]
    headline["worst_class_recall"] = test.get("worst_class_recall")
    ingested = results.get("ingest_report") or manifest  # OwnDataExampleGen's account, else prepare-data's manifest
    task_blocks = {
        "calibration": blocks.calibration_block(training, ev),
        "unlabeled": blocks.unlabeled_block(manifest),
        "data": blocks.data_block(manifest, data_dir, ingested),
        "semi": blocks.semi_block(training, mode),
        "plan": blocks.plan_block(training, mode),
        "pseudo_labels": blocks.pseudo_labels_block(training, results.get("pseudo_label_stats"),
                                                    cfg_dict["semi"]["pseudo_label"]["weight"],
                                                    results.get("pseudo_labeled_examples_uri"),
                                                    results.get("base_model_uri")),
        "ssp": blocks.ssp_block(cfg_dict, results.get("ssp"), training),
        "warm_start": blocks.warm_start_block(cfg_dict, training, results.get("base_training")),
        "shift": ev.get("shift"),  # the newest data's class shares against the last blessed model's (models/shift.py)
        "backbone": manifest.get("backbone"),  # train.backbone as set and as resolved (auto: by image size), and why
    }
    return run_envelope(cfg_dict, results, timings, headline, gate_block(ev), task_blocks)


def write_report(metrics: dict, out_dir: str) -> None:
    """``out_dir``/metrics.json, report.md, per_class.png, and confusion.png and ssp_loss.png when the run has them."""
    write_metrics(metrics, out_dir)
    plot_per_class(metrics, os.path.join(out_dir, "per_class.png"))
    ssp = metrics.get("ssp") or {}
    if ssp.get("history"):
        plot_ssp_loss(ssp, os.path.join(out_dir, "ssp_loss.png"))
    plot_confusion(metrics, os.path.join(out_dir, "confusion.png"))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report_md(metrics))
