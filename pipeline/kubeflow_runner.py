"""Compile the same pipeline for Kubeflow Pipelines v2, for scheduled retraining. The task comes from the
config through pipeline/tasks.py, as for the local runner: ``--preset regression`` compiles the regression
DAG.

The package is YAML (``.yaml``/``.yml``): TFX then writes the bare pipeline spec, the one form kfp 2.16's client
uploads and runs (it refuses ``.json`` names, and TFX's PipelineJob JSON wrapper, deprecated in
kubeflow_v2_dag_runner, whatever its name). ``python -m pipeline schedule`` (pipeline/kfp_schedule.py)
uploads it and creates the recurring run.

Each scheduled run re-ingests the data location, retrains, and pushes only what passes the gate against
the last blessed model (the Resolver reads the cluster's MLMD).
"""

from __future__ import annotations

import os

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import tasks
from pipeline.configs import PipelineConfig
from pipeline.kfp_schedule import PACKAGE_SUFFIXES

DEFAULT_IMAGE = "longtail-tfx:latest"  # built from the Dockerfile at the top of the checkout


def compile_pipeline(cfg: PipelineConfig, data_dir: str | None, pipeline_root: str, output_file: str,
                     image: str = DEFAULT_IMAGE, serving_dir: str | None = None) -> str:
    """Write the compiled pipeline of cfg's task to ``output_file`` (.yaml/.yml); ``data_dir`` is the data location
    as the cluster sees it (None: the configured one, read here as it is)."""
    if not output_file.endswith(PACKAGE_SUFFIXES):
        raise ValueError(f"--output {output_file}: a Kubeflow package must end in .yaml or .yml (TFX then writes the bare "
                         "pipeline spec, which kfp's client uploads; it refuses .json and TFX's PipelineJob wrapper)")
    task = tasks.for_config(cfg)
    inputs = task.inputs(cfg, data_dir)
    _, model_name = task.names(cfg)
    pipeline = task.create_pipeline(
        cfg, inputs, pipeline_root, metadata_path=None,
        serving_dir=serving_dir or os.path.join(pipeline_root, "serving", model_name),
        beam_args=cfg.beam.args())  # the config's beam section, compiled into every Beam task's arguments
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)), output_filename=os.path.basename(output_file))
    runner.run(pipeline)
    return os.path.abspath(output_file)
