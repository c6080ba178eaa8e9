"""Compile the same pipeline for Kubeflow Pipelines v2 (a pipeline-spec JSON), for scheduled retraining.

The compiled JSON is submitted and scheduled with the KFP SDK on a machine that can reach the
cluster, e.g.::

    kfp.Client(host=...).create_recurring_run(experiment_id=..., job_name="longtail-weekly",
        pipeline_package_path="pipeline.json", cron_expression="0 0 3 * * 1")

Each scheduled run re-ingests the data folder, retrains, and pushes only what passes the per-class
gate against the last blessed model (the Resolver reads the cluster's MLMD).
"""

from __future__ import annotations

import os

from components.data.prepare import load_manifest
from pipeline.configs import PipelineConfig
from pipeline.pipeline import create_pipeline

DEFAULT_IMAGE = "longtail-tfx:latest"  # built from the Dockerfile at the top of the checkout


def compile_pipeline(cfg: PipelineConfig, data_dir: str, pipeline_root: str, output_file: str,
                     image: str = DEFAULT_IMAGE, serving_dir: str | None = None) -> str:
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    manifest = load_manifest(data_dir)
    pipeline = create_pipeline(
        cfg, data_dir, manifest, pipeline_root, metadata_path=None,
        serving_dir=serving_dir or os.path.join(pipeline_root, "serving", cfg.model_name),
        beam_pipeline_args=[f"--direct_running_mode={cfg.beam_direct_running_mode}",
                            f"--direct_num_workers={cfg.beam_num_workers}"])
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)), output_filename=os.path.basename(output_file))
    runner.run(pipeline)
    return os.path.abspath(output_file)
