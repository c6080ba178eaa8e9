"""The run envelope every task's metrics.json shares: the headline split, the gate's decision and where the model went,
the test report and label statistics, the seed and config, the Trainer's summary, timings and the run's identity.

A task (pipeline/tasks.py) supplies what differs: its headline numbers, its gate block and its own blocks
(pipeline/report.py for classification, pipeline/regression_report.py for regression). Pure Python.
"""

from __future__ import annotations

import json
import os

METRICS_FILE = "metrics.json"


def run_envelope(cfg_dict: dict, results: dict, timings: dict, headline: dict, gate: dict, blocks: dict) -> dict:
    """metrics.json of a run: ``headline`` (the candidate's numbers on the test split) after ``split``, the task's
    ``gate`` block, the task's other ``blocks`` after ``test`` and ``label_stats``, then what every run records."""
    ev = results["evaluation"] or {}
    return {
        "split": ev.get("report_split"),  # the headline numbers: the candidate on this split
        **headline,
        "blessed": ev.get("blessed"),
        "pushed": results["pushed"],
        "pushed_model_dir": results["pushed_model_dir"],
        "already_serving": results.get("already_serving", False),  # identical model already pushed: nothing copied
        "gate": gate,
        "test": ev.get("report") or {},
        "label_stats": results["label_stats"] or {},
        **blocks,
        "seed": cfg_dict["train"]["seed"],
        "config": cfg_dict,
        "training": results["training"],
        "timings": timings,
        "run_id": results["run_id"],
        "executions": results["executions"],
        "model_run_dir": results["model_run_dir"],
    }


def write_metrics(metrics: dict, out_dir: str) -> None:
    """``out_dir``/metrics.json (the folder made if missing)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
