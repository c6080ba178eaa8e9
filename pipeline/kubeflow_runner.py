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

from kfp.compiler.compiler_utils import _cpu_to_float, _memory_to_float
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.components.trainer import component as trainer_component
from tfx.dsl.components.base import base_component
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import tasks
from pipeline.configs import KubeflowConfig, PipelineConfig
from pipeline.kfp_schedule import PACKAGE_SUFFIXES

DEFAULT_IMAGE = "longtail-tfx:latest"  # built from the Dockerfile at the top of the checkout
ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def cluster_serving_dir(serving_root: str, pipeline_root: str, model_name: str) -> str:
    """Where the compiled Pusher writes: ``serving_root`` when it is an absolute path or a URI (gs://, s3://, a volume
    every pod mounts); a relative one (the default ``serving``) lies under the pipeline root, since a pod's working
    folder does not outlive it."""
    root = serving_root if "://" in serving_root or os.path.isabs(serving_root) else os.path.join(pipeline_root,
                                                                                                   serving_root)
    return os.path.join(root, model_name)


def resource_spec(cpu: str, memory: str, gpus: int = 0, gpu_resource: str = "nvidia.com/gpu") -> ResourceSpec:
    """A task's requests as kfp's compiler writes them (pipeline_spec_builder): the resource_* strings, and the older
    float fields beside them for KFP installations that read only those."""
    spec = ResourceSpec(resource_cpu_request=cpu, cpu_request=_cpu_to_float(cpu), resource_memory_request=memory,
                        memory_request=_memory_to_float(memory))
    if gpus:
        spec.accelerator.CopyFrom(ResourceSpec.AcceleratorConfig(resource_type=gpu_resource, resource_count=str(gpus),
                                                                 type=gpu_resource, count=gpus))
    return spec


def request_resources(components, k: KubeflowConfig) -> None:
    """Every container task gets ``kubeflow.cpu_request`` / ``memory_request``; the Trainers get the trainer_* ones and
    ``trainer_gpus`` GPUs. Resolvers and importers run in the driver, with no container of their own."""
    for c in components:
        if not isinstance(c, base_component.BaseComponent):
            continue
        if isinstance(c, trainer_component.Trainer):
            c.with_platform_config(resource_spec(k.trainer_cpu_request, k.trainer_memory_request, k.trainer_gpus,
                                                 k.gpu_resource))
        else:
            c.with_platform_config(resource_spec(k.cpu_request, k.memory_request))


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
        serving_dir=serving_dir or cluster_serving_dir(cfg.serving_root, pipeline_root, model_name),
        beam_args=cfg.beam.args())  # the config's beam section, compiled into every Beam task's arguments
    request_resources(pipeline.components, cfg.kubeflow)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)), output_filename=os.path.basename(output_file))
    runner.run(pipeline)
    fill_missing_resources(output_file, resource_spec(cfg.kubeflow.cpu_request, cfg.kubeflow.memory_request))
    return os.path.abspath(output_file)


def fill_missing_resources(package: str, spec: ResourceSpec) -> None:
    """TFX's Kubeflow v2 step builder drops platform_config for a FileBasedExampleGen (CsvExampleGen, ImportExample-
    Gen: tfx/orchestration/kubeflow/v2/step_builder.py, _build_file_based_example_gen_spec), so those containers
    get the default task requests here, in the package itself."""
    import yaml
    from google.protobuf import json_format

    with open(package) as f:
        doc = yaml.safe_load(f)
    requests = json_format.MessageToDict(spec)
    patched = [name for name, ex in doc["deploymentSpec"]["executors"].items()
               if "container" in ex and not ex["container"].get("resources")]
    for name in patched:
        doc["deploymentSpec"]["executors"][name]["container"]["resources"] = requests
    if patched:
        with open(package, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
