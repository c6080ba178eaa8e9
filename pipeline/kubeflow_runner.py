"""Compile the same pipeline for Kubeflow Pipelines v2, for scheduled retraining. The task comes from the
config through pipeline/tasks.py, as for the local runner: ``--preset regression`` compiles the regression
DAG.

The output file's suffix picks the format TFX writes: ``.json`` the PipelineJob wrapper (deprecated in
kubeflow_v2_dag_runner), ``.yaml`` the bare pipeline spec.

Each scheduled run re-ingests the data location, retrains, and pushes only what passes the gate against
the last blessed model (the Resolver reads the cluster's MLMD).
"""

from __future__ import annotations

import os

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import tasks
from pipeline.configs import PipelineConfig

DEFAULT_IMAGE = "longtail-tfx:latest"  # built from the Dockerfile at the top of the checkout


def compile_pipeline(cfg: PipelineConfig, data_dir: str | None, pipeline_root: str, output_file: str,
                     image: str = DEFAULT_IMAGE, serving_dir: str | None = None) -> str:
    """Write the compiled pipeline of cfg's task to ``output_file``; ``data_dir`` is the data location as the
    cluster sees it (None: the configured one, read here as it is)."""
    task = tasks.for_config(cfg)
    inputs = task.inputs(cfg, data_dir)
    _, model_name = task.names(cfg)
    pipeline = task.create_pipeline(
        cfg, inputs, pipeline_root, metadata_path=None,
        serving_dir=serving_dir or os.path.join(pipeline_root, "serving", model_name),
        beam_args=[f"--direct_running_mode={cfg.beam_direct_running_mode}", f"--direct_num_workers={cfg.beam_num_workers}"])
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)), output_filename=os.path.basename(output_file))
    runner.run(pipeline)
    return os.path.abspath(output_file)
