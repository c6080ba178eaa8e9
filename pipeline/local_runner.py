"""Run the pipeline locally: LocalDagRunner, MLMD on SQLite, Beam DirectRunner."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

from components.data.longtail import SplitSpec
from components.data.prepare import MANIFEST, load_manifest, prepare_from_source
from pipeline import report
from pipeline.configs import PipelineConfig
from pipeline.data_cli import default_data_dir, parse_order


def split_spec(cfg: PipelineConfig) -> SplitSpec:
    d = cfg.data
    return SplitSpec(rho=d.rho, n_max=d.n_max, class_order=parse_order(d.class_order), val_per_class=d.val_per_class,
                     rho_u=d.rho_u, unlabeled_size=d.unlabeled_size, unlabeled_order=parse_order(d.unlabeled_order),
                     pool_relevance=d.pool_relevance, seed=d.seed)


def ensure_data(cfg: PipelineConfig) -> str:
    """The prepared data folder; prepared now when missing."""
    if cfg.data.data_dir:
        load_manifest(cfg.data.data_dir)  # raises a named error if it is not a prepared dataset
        return os.path.abspath(cfg.data.data_dir)
    spec = split_spec(cfg)
    out = default_data_dir(cfg.data.source, spec)
    if not os.path.exists(os.path.join(out, MANIFEST)):
        print(f"[run] preparing data in {out}", file=sys.stderr, flush=True)
        prepare_from_source(cfg.data.source, spec, out, cfg.data.source_dir)
    return os.path.abspath(out)


class _ComponentProgress(logging.Filter):
    """Let through only TFX's 'Component X is running/finished' lines, as progress."""

    def filter(self, record):
        msg = record.getMessage()
        if msg.startswith("Component ") and ("is running" in msg or "is finished" in msg):
            record.msg, record.args = f"[pipeline] {msg}", ()
            return True
        return record.levelno >= logging.ERROR


def _show_progress() -> None:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ComponentProgress())
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Beam and TF log through the root logger; keep them quiet unless something is wrong.
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


def _local_setup(cfg: PipelineConfig, pipeline_name: str, model_name: str) -> tuple[str, str, str, list[str]]:
    """(pipeline root, MLMD SQLite path, serving folder, Beam DirectRunner args) of a local run."""
    tfx_home = os.path.abspath(os.path.join(cfg.runs_root, "_tfx", pipeline_name))
    os.makedirs(tfx_home, exist_ok=True)
    beam_args = [f"--direct_running_mode={cfg.beam_direct_running_mode}", f"--direct_num_workers={cfg.beam_num_workers}"]
    return (os.path.join(tfx_home, "root"), os.path.join(tfx_home, "metadata.sqlite"),
            os.path.abspath(os.path.join(cfg.serving_root, model_name)), beam_args)


def _run_local(pipeline, metadata_path: str) -> tuple[dict, float]:
    """Run on LocalDagRunner with progress lines; (pipeline.outputs.run_results of the run, seconds)."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from pipeline.outputs import run_results

    _show_progress()
    t0 = time.time()
    LocalDagRunner().run(pipeline)
    seconds = time.time() - t0
    return run_results(metadata_path), seconds


def run_pipeline(cfg: PipelineConfig, out_dir: str | None = None) -> str:
    """Run the whole pipeline; write metrics.json, report.md and the plot; return the output dir."""

    from pipeline.outputs import BASE_TRAINER, PRETRAINER, TRAINER
    from pipeline.pipeline import create_pipeline

    if cfg.task == "regression":
        return run_regression_pipeline(cfg, out_dir)
    if cfg.task != "classification":
        raise ValueError(f"unknown task {cfg.task!r}; choose classification or regression")
    t_start = time.time()
    data_dir = ensure_data(cfg)
    manifest = load_manifest(data_dir)
    pipeline_root, metadata_path, serving_dir, beam_args = _local_setup(cfg, cfg.name, cfg.model_name)
    if manifest["splits"]["unlabeled"]["num_examples"] == 0:
        print("[run] the unlabeled pool is empty: running supervised-only (no unlabeled branch)", file=sys.stderr)
    pipeline = create_pipeline(cfg, data_dir, manifest, pipeline_root, metadata_path, serving_dir, beam_args)
    results, pipeline_seconds = _run_local(pipeline, metadata_path)
    train_seconds = (results["training"] or {}).get("train_seconds")
    trained_now = results["executions"].get(TRAINER) == "COMPLETE"
    pretrain_seconds = (results["ssp"] or {}).get("pretrain_seconds")
    pretrained_now = results["executions"].get(PRETRAINER) == "COMPLETE"
    timings = {"pipeline_seconds": pipeline_seconds, "total_seconds": time.time() - t_start,
               "train_seconds": train_seconds if trained_now else 0.0,
               "train_cached": not trained_now,
               "pretrain_seconds": (pretrain_seconds or 0.0) if pretrained_now else 0.0,
               "pretrain_cached": PRETRAINER in results["executions"] and not pretrained_now}
    base_now = results["executions"].get(BASE_TRAINER) == "COMPLETE"
    timings["base_train_seconds"] = ((results["base_training"] or {}).get("train_seconds") or 0.0) if base_now else 0.0
    timings["other_seconds"] = (pipeline_seconds - (timings["train_seconds"] or 0.0) - timings["pretrain_seconds"]
                                - timings["base_train_seconds"])
    metrics = report.build_metrics(dataclasses.asdict(cfg), manifest, data_dir, results, timings)
    if out_dir is None:
        out_dir = os.path.join(cfg.runs_root, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir = os.path.abspath(out_dir)
    report.write_report(metrics, out_dir)
    print(report.console_table(metrics), flush=True)
    return out_dir


def regression_csv_dir(cfg: PipelineConfig) -> str:
    """The folder CsvExampleGen reads: ``regression.csv_dir`` or the taxi CSV of the tfx package."""
    from components.errors import PipelineDataError
    from pipeline.pipeline import default_csv_dir

    csv_dir = os.path.abspath(cfg.regression.csv_dir or default_csv_dir())
    if not os.path.isdir(csv_dir) or not any(f.endswith(".csv") for f in os.listdir(csv_dir)):
        raise PipelineDataError(f"regression.csv_dir {csv_dir}", "no .csv file there (CsvExampleGen reads every file of "
                                "the folder; the default is tfx/examples/chicago_taxi_pipeline/data/simple in the tfx package)")
    return csv_dir


def run_regression_pipeline(cfg: PipelineConfig, out_dir: str | None = None) -> str:
    """task=regression: the taxi CSV through CsvExampleGen .. Pusher; metrics.json and report.md."""

    from pipeline import regression_report
    from pipeline.pipeline import create_regression_pipeline, regression_names

    t_start = time.time()
    csv_dir = regression_csv_dir(cfg)
    pipeline_name, model_name = regression_names(cfg)
    pipeline_root, metadata_path, serving_dir, beam_args = _local_setup(cfg, pipeline_name, model_name)
    pipeline = create_regression_pipeline(cfg, csv_dir, pipeline_root, metadata_path, serving_dir, beam_args)
    results, pipeline_seconds = _run_local(pipeline, metadata_path)
    train_seconds = (results["training"] or {}).get("train_seconds")
    trained_now = results["executions"].get("components.trainer.LongTailTrainer") == "COMPLETE"
    timings = {"pipeline_seconds": pipeline_seconds, "total_seconds": time.time() - t_start,
               "train_seconds": train_seconds if trained_now else 0.0, "train_cached": not trained_now,
               "other_seconds": pipeline_seconds - (train_seconds if trained_now and train_seconds else 0.0)}
    metrics = regression_report.build_metrics(dataclasses.asdict(cfg), csv_dir, results, timings)
    if out_dir is None:
        out_dir = os.path.join(cfg.runs_root, f"{pipeline_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir = os.path.abspath(out_dir)
    regression_report.write_report(metrics, out_dir)
    print(regression_report.console_table(metrics), flush=True)
    return out_dir
