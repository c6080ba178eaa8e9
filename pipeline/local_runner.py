"""Run the pipeline locally: LocalDagRunner, MLMD on SQLite, Beam on the configured runner (FnApiRunner in-process
by default; PortableRunner for a job service). The task (pipeline/tasks.py)
says what runs; this module only runs it and writes what the task reports."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time

from absl import logging as absl_logging
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from pipeline import tasks
from pipeline.configs import PipelineConfig
from pipeline.outputs import run_results


class _ComponentProgress(logging.Filter):
    """Let through only TFX's 'Component X is running/finished' lines, as progress."""

    def filter(self, record):
        msg = record.getMessage()
        if msg.startswith("Component ") and ("is running" in msg or "is finished" in msg):
            record.msg, record.args = f"[pipeline] {msg}", ()
            return True
        return record.levelno >= logging.ERROR


def _show_progress() -> None:
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


def local_paths(cfg: PipelineConfig, pipeline_name: str, model_name: str) -> tuple[str, str, str]:
    """(pipeline root, MLMD SQLite path, serving folder) of a local run; nothing is created (``check`` prints them)."""
    tfx_home = os.path.abspath(os.path.join(cfg.runs_root, "_tfx", pipeline_name))
    return (os.path.join(tfx_home, "root"), os.path.join(tfx_home, "metadata.sqlite"),
            os.path.abspath(os.path.join(cfg.serving_root, model_name)))


def default_out_dir(cfg: PipelineConfig, pipeline_name: str, out_dir: str | None = None) -> str:
    """The run's output folder: ``out_dir`` as given, else runs/<pipeline>-<time>/."""
    return os.path.abspath(out_dir or os.path.join(cfg.runs_root, f"{pipeline_name}-{time.strftime('%Y%m%d-%H%M%S')}"))


def local_setup(cfg: PipelineConfig, pipeline_name: str, model_name: str) -> tuple[str, str, str, list[str]]:
    """(pipeline root, MLMD SQLite path, serving folder, Beam pipeline args) of a local run, its MLMD folder made."""
    pipeline_root, metadata_path, serving_dir = local_paths(cfg, pipeline_name, model_name)
    os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
    return pipeline_root, metadata_path, serving_dir, cfg.beam.args()


class PipelineBusy(RuntimeError):
    """Another run of the same pipeline holds its lock."""


@contextlib.contextmanager
def pipeline_lock(metadata_path: str, pipeline_name: str, wait: bool = True):
    """One run at a time per pipeline: its MLMD is one SQLite file, and two LocalDagRunners on it would race for
    the same executions. An OS lock (flock) on ``run.lock`` beside it, so a killed run never leaves it held; a second
    run waits for the first, saying whom it waits for (``wait=False``: it stops at once naming the holder)."""
    path = os.path.join(os.path.dirname(metadata_path), "run.lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            if not wait:
                raise PipelineBusy(f"pipeline {pipeline_name!r} is already running ({holder}); its MLMD "
                                   f"({metadata_path}) is one SQLite file, so runs of one pipeline go one at a time: "
                                   "wait for it (run without --no-wait), or give this run another name "
                                   "(--set name=...)") from None
            print(f"[run] pipeline {pipeline_name!r} is already running ({holder}); waiting for it to finish (runs of "
                  "one pipeline share one MLMD SQLite file, so they go one at a time; --no-wait stops instead)",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def run_pipeline(cfg: PipelineConfig, out_dir: str | None = None, wait: bool = True) -> str:
    """Run the config's task end to end; write metrics.json, report.md and the plots; return the output dir.
    ``wait``: a run of the same pipeline in progress is waited for (False: :class:`PipelineBusy`)."""
    task = tasks.for_config(cfg)
    t_start = time.time()
    inputs = task.inputs(cfg)
    cfg, beam_reason = tasks.resolve_beam(cfg, inputs)
    if beam_reason:
        print(f"[run] {beam_reason}", file=sys.stderr, flush=True)
    pipeline_name, model_name = task.names(cfg)
    pipeline_root, metadata_path, serving_dir, beam_args = local_setup(cfg, pipeline_name, model_name)
    with pipeline_lock(metadata_path, pipeline_name, wait):
        pipeline = task.create_pipeline(cfg, inputs, pipeline_root, metadata_path, serving_dir, beam_args)
        _show_progress()
        t0 = time.time()
        LocalDagRunner().run(pipeline)
        results = run_results(metadata_path)
    timings = task.timings(results, time.time() - t0)
    timings["components"] = results["components"]  # each node's seconds, from MLMD
    timings["total_seconds"] = time.time() - t_start
    metrics = task.build_metrics(cfg, inputs, results, timings)
    metrics["beam"] = {"args": beam_args, "reason": beam_reason}
    out_dir = default_out_dir(cfg, pipeline_name, out_dir)
    task.write_report(metrics, out_dir)
    print(task.console_table(metrics), flush=True)
    return out_dir
