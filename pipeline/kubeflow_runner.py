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

import itertools
import json
import os
import sys

from kfp.compiler.compiler_utils import _cpu_to_float, _memory_to_float
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.components.trainer import component as trainer_component
from tfx.dsl.components.base import base_component
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
from tfx.utils import json_utils

from components import tfjob
from components.data import storage
from components.data.prepare import MANIFEST, Manifest
from models.job import CLUSTER_LAUNCH_KEY
from pipeline import tasks
from pipeline.configs import KubeflowConfig, PipelineConfig
from pipeline.kfp_schedule import PACKAGE_SUFFIXES

DEFAULT_IMAGE = "longtail-tfx:latest"  # built from the Dockerfile at the top of the checkout
ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def stage_default_data(cfg: PipelineConfig, pipeline_root: str) -> tuple[str, dict]:
    """The bundled data's prepared folder (prepared now when missing) copied to ``<pipeline root>/data/<folder>``,
    where the cluster's pods read it (the folder on this host is not in the image: .dockerignore keeps data/ out);
    not copied again when the same manifest is already there. (the location, its manifest)"""
    local = tasks.ensure_data(cfg)
    target = os.path.join(pipeline_root, "data", os.path.basename(local.rstrip("/")))
    mine = storage.read_text(os.path.join(local, MANIFEST))
    there = os.path.join(target, MANIFEST)
    if not (storage.exists(there) and storage.read_text(there) == mine):
        storage.copy_folder(local, target, MANIFEST,
                            log=lambda m: print(f"[compile-kfp] {m}", file=sys.stderr, flush=True))
    return target, json.loads(mine)


def cluster_serving_dir(serving_root: str, pipeline_root: str, model_name: str) -> str:
    """Where the compiled Pusher writes: ``serving_root`` when it is an absolute path or a URI (gs://, s3://, a volume
    every pod mounts); a relative one (the default ``serving``) lies under the pipeline root, since a pod's working
    folder does not outlive it."""
    root = serving_root if storage.is_uri(serving_root) or os.path.isabs(serving_root) else os.path.join(
        pipeline_root, serving_root)
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


def launches_tfjobs(cfg: PipelineConfig) -> bool:
    """Whether the package's Trainer steps start TFJobs (train.distribute=multi_worker, no local workers)."""
    return cfg.train.distribute == "multi_worker" and cfg.train.local_workers <= 1


def launch_workers_as_tfjobs(components, cfg: PipelineConfig, image: str) -> None:
    """train.distribute=multi_worker on Kubeflow: each Trainer's job gets the TFJob of ``kubeflow.workers`` workers
    it launches from its step (components/tfjob.py), since no pod of a KFP task has a TF_CONFIG of its own."""
    if not launches_tfjobs(cfg):
        return
    k = cfg.kubeflow
    if k.workers < 2:
        raise ValueError("train.distribute=multi_worker in a Kubeflow package needs kubeflow.workers >= 2: the TFJob "
                         "each Trainer step launches (docs/distributed.md)")
    requests = {"cpu": k.trainer_cpu_request, "memory": k.trainer_memory_request}
    for c in components:
        if not isinstance(c, trainer_component.Trainer):
            continue
        module = c.exec_properties["run_fn"].rsplit(".", 1)[0]
        job = json_utils.loads(c.exec_properties["custom_config"])
        job[CLUSTER_LAUNCH_KEY] = tfjob.cluster_launch(f"{cfg.name}-{c.id}", image, k.workers, module, requests,
                                                       k.trainer_gpus, k.gpu_resource, k.namespace, k.train_timeout_s)
        c.exec_properties["custom_config"] = json_utils.dumps(job)


def request_resources(components, k: KubeflowConfig, trainers_launch_tfjobs: bool = False) -> None:
    """Every container task gets ``kubeflow.cpu_request`` / ``memory_request``; the Trainers get the trainer_* ones and
    ``trainer_gpus`` GPUs, unless they launch TFJobs: then the TFJob's worker pods get those, and the step that
    only waits for them the default task's. Resolvers and importers run in the driver, with no container."""
    for c in components:
        if not isinstance(c, base_component.BaseComponent):
            continue
        if isinstance(c, trainer_component.Trainer) and not trainers_launch_tfjobs:
            c.with_platform_config(resource_spec(k.trainer_cpu_request, k.trainer_memory_request, k.trainer_gpus,
                                                 k.gpu_resource))
        else:
            c.with_platform_config(resource_spec(k.cpu_request, k.memory_request))


def compile_pipeline(cfg: PipelineConfig, data_dir: str | None, pipeline_root: str, output_file: str,
                     image: str = DEFAULT_IMAGE, serving_dir: str | None = None, manifest: str | None = None) -> str:
    """Write the compiled pipeline of cfg's task to ``output_file`` (.yaml/.yml); ``data_dir`` is the data location
    as the cluster sees it (a path or a URI: gs://, s3://; its manifest read here with GFile, or from ``manifest``, a
    local copy, where this host cannot read the location). None: the configured one; a prepared folder of the
    bundled data (no data.data_dir) is copied under the pipeline root first (:func:`stage_default_data`)."""
    if not output_file.endswith(PACKAGE_SUFFIXES):
        raise ValueError(f"--output {output_file}: a Kubeflow package must end in .yaml or .yml (TFX then writes the bare "
                         "pipeline spec, which kfp's client uploads; it refuses .json and TFX's PipelineJob wrapper)")
    task = tasks.for_config(cfg)
    given = None
    prepared_folder = cfg.task != "regression" and not tasks.ingests_own_data(cfg)  # a manifest describes the data
    if manifest:
        if not prepared_folder or not data_dir:
            raise ValueError("--manifest goes with --data-dir and a prepared image folder (data.source=fashion_mnist, "
                             "tfds:): the manifest.json of the folder --data-dir names")
        try:
            given = Manifest.from_dict(json.loads(storage.read_text(manifest)), data_dir).raw
        except (OSError, ValueError) as e:
            raise ValueError(f"--manifest {manifest}: {e}") from None
    elif data_dir is None and prepared_folder and not cfg.data.data_dir:
        data_dir, given = stage_default_data(cfg, pipeline_root)
    inputs = task.inputs(cfg, data_dir, given)
    cfg, _ = tasks.resolve_beam(cfg, inputs)  # the compiled package's Beam arguments, settled from its data's size
    _, model_name = task.names(cfg)
    pipeline = task.create_pipeline(
        cfg, inputs, pipeline_root, metadata_path=None,
        serving_dir=serving_dir or cluster_serving_dir(cfg.serving_root, pipeline_root, model_name),
        beam_args=cfg.beam.args())  # the config's beam section, compiled into every Beam task's arguments
    request_resources(pipeline.components, cfg.kubeflow, trainers_launch_tfjobs=launches_tfjobs(cfg))
    launch_workers_as_tfjobs(pipeline.components, cfg, image)
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
        text = f.read()
    doc = yaml.safe_load(text)
    requests = json_format.MessageToDict(spec)
    patched = [name for name, ex in doc["deploymentSpec"]["executors"].items()
               if "container" in ex and not ex["container"].get("resources")]
    for name in patched:
        doc["deploymentSpec"]["executors"][name]["container"]["resources"] = requests
    if patched:
        # the package's leading comment block (TFX's "# PIPELINE DEFINITION" header, which kfp shows) is kept
        header = "".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines(keepends=True)))
        with open(package, "w") as f:
            f.write(header + yaml.safe_dump(doc, sort_keys=False, width=1 << 30))
