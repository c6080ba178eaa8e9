"""create_pipeline(): wiring only. Every number comes from the typed config or from artifacts.

labeled    -> ImportExampleGen -> StatisticsGen -> ExampleValidator (schemas/labeled.pbtxt, label in [0, C-1]) -> AnomalyCheck
unlabeled  -> ImportExampleGen -> StatisticsGen -> ExampleValidator (schemas/unlabeled.pbtxt) -> AnomalyCheck
labeled (+ unlabeled count) -> LabelStatsGen (Beam) -> LongTailTrainer (run_fn: models.trainer.run_fn)
                               unlabeled -> LongTailTrainer too when the mode reads the pool online (online_pool)
a mode with pseudo_labels, and a pool: BaseTrainer (supervised, the same train settings)
  -> PseudoLabeler (Beam; pool + validation split) -> pseudo-labeled examples + statistics
  -> LongTailTrainer, whose run_fn takes the planner's decision (models/planner.py, models/pseudo_label.py) and
  trains on labeled + pseudo-labeled or labeled only; semi.pseudo_label.init=base: it starts from the
  BaseTrainer's model (its init_model input)
labeled (+ unlabeled) images -> SSPPretrainer (run_fn: models.ssp.run_fn) -> LongTailTrainer's base_model
  [pretrain.method != none]
Resolver(latest blessed model) + trainer model (+ the pool) -> PerClassEvaluator (gate, paired with the last blessed
  model; the shift report: models/shift.py) -> LongTailPusher (TF Serving layout; a model already serving is not
  copied again)
data read as spans, train.warm_start=auto: the same Resolver -> BaseTrainer / LongTailTrainer's warm_start_model
  (models/retrain.py: from the last blessed model of the same label space, fewer epochs)

An empty unlabeled pool drops the unlabeled branch (and the PseudoLabeler): the run is supervised-only and says so.
Which of these a run has is read from the training mode (models/modes.py: pool, pseudo_labels, online_pool,
inline_ssp); no mode is named here.
"""

from __future__ import annotations

import dataclasses
import os

import tfx as tfx_package
from tfx import v1 as tfx
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import LatestBlessedModelStrategy
from tfx.proto import example_gen_pb2, pusher_pb2

from components.anomaly_check import AnomalyCheck
from components.artifacts import (
    INIT_MODEL_KEY,
    LABEL_STATS_KEY,
    PSEUDO_LABEL_STATS_KEY,
    PSEUDO_LABELED_EXAMPLES_KEY,
    PSEUDO_LABELER_STATISTICS_KEY,
    WARM_START_MODEL_KEY,
)
from components.data.longtail import SplitSpec
from components.data.own_data import OWN_DATA_INGESTION
from components.errors import PipelineDataError
from components.evaluator import PerClassEvaluator
from components.label_stats_gen import LabelStatsGen
from components.own_data_example_gen import OwnDataExampleGen
from components.pseudo_labeler import PseudoLabeler
from components.pusher import LongTailPusher, newest_version
from components.regression_evaluator import RegressionEvaluator
from components.regression_label_stats_gen import RegressionLabelStatsGen
from components.schema_gen import LabelDomainSchemaGen
from components.trainer import LongTailTrainer, PseudoLabelBaseTrainer, SSPPretrainer
from models import job as trainer_job
from models import modes
from models.config import CalibrationConfig, DistributeConfig, SemiConfig
from models.job import TrainerJob
from pipeline.configs import PipelineConfig

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas")
RUN_FN = "models.trainer.run_fn"
PRETRAIN_RUN_FN = "models.ssp.run_fn"


def _example_gen(data_dir: str, splits: dict[str, str], component_id: str):
    config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name=n, pattern=p) for n, p in splits.items()])
    output = None
    if len(splits) == 1:  # one input split would otherwise be hash-split 2:1 into train/eval
        (name,) = splits
        output = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
            splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=1)]))
    return tfx.components.ImportExampleGen(input_base=data_dir, input_config=config, output_config=output
                                           ).with_id(component_id)


def _validated(examples, schema_file: str, prefix: str, name: str, exclude_splits: list[str] | None = None,
               num_classes: int | None = None):
    """StatisticsGen -> ExampleValidator against the schema -> AnomalyCheck. With ``num_classes`` the schema's label
    gets the domain [0, C-1], categorical (LabelDomainSchemaGen), and StatisticsGen reads it: per-class counts."""
    if num_classes is None:
        schema = tfx.components.ImportSchemaGen(schema_file=schema_file).with_id(f"{prefix}SchemaGen")
        stats = tfx.components.StatisticsGen(examples=examples, exclude_splits=exclude_splits)
    else:
        with open(schema_file) as f:
            schema = LabelDomainSchemaGen(schema_text=f.read(), num_classes=num_classes).with_id(f"{prefix}SchemaGen")
        stats = tfx.components.StatisticsGen(examples=examples, schema=schema.outputs["schema"],
                                             exclude_splits=exclude_splits)
    stats = stats.with_id(f"{prefix}StatisticsGen")
    validator = tfx.components.ExampleValidator(statistics=stats.outputs["statistics"], schema=schema.outputs["schema"]
                                                ).with_id(f"{prefix}ExampleValidator")
    check = AnomalyCheck(anomalies=validator.outputs["anomalies"], examples_name=name).with_id(f"{prefix}AnomalyCheck")
    return [stats, schema, validator, check], schema, check


def training_job(cfg: PipelineConfig, manifest: dict, pipeline_root: str, data_dir: str | None = None) -> TrainerJob:
    """The classification Trainer's job (models/job.py) from the typed config; ``data_dir``: where the pool's true
    classes are (a prepared folder), for modes that read the pool online."""
    mode = cfg.semi.mode
    pool_setting = pool_truth = None
    if mode.online_pool:
        # the declared pool setting chooses DASO's T_dist; the true pool classes are read only to score pseudo-labels
        pool_setting = {"rho": manifest["rho"], "rho_u": manifest["rho_u"],
                        "same_order": manifest.get("unlabeled_class_order") == manifest.get("class_order")}
        if data_dir:
            pool_truth = {"data_dir": data_dir, "unlabeled": manifest["splits"]["unlabeled"]}
    return TrainerJob(stage=trainer_job.TRAIN, train=cfg.train, semi=cfg.semi,
                      pretrain=cfg.pretrain,  # a planned SSP runs with these (models.pseudo_label)
                      calibration=cfg.calibration, post_hoc_logit_adjust_tau=cfg.post_hoc_logit_adjust_tau,
                      image_shape=manifest["image_shape"], image_fit=(manifest.get("image_fit") or {}).get("method"),
                      pool_setting=pool_setting, pool_truth=pool_truth,
                      warm_start_model=warm_start_folder(cfg),
                      ).with_backup(pipeline_root, manifest.get("splits"))


def warm_start_folder(cfg: PipelineConfig) -> str | None:
    """train.warm_start when it names a model folder (absolute), else None (auto / none: models/retrain.py)."""
    setting = cfg.train.warm_start
    if not setting or setting in ("auto", "none"):
        return None
    return setting if "://" in setting else os.path.abspath(setting)


def warm_starts_from_blessed(cfg: PipelineConfig, manifest: dict) -> bool:
    """train.warm_start=auto and the data is read as spans (data over time): the Trainers start from the last blessed
    model (the gate's baseline resolver feeds them)."""
    return cfg.train.warm_start == "auto" and bool(manifest.get("spans"))


def pseudo_label_base_job(cfg: PipelineConfig, manifest: dict, pipeline_root: str,
                          data_dir: str | None = None) -> TrainerJob:
    """The pseudo-label BaseTrainer's job: supervised, on the labeled set, ``semi.pseudo_label.base_epochs`` (None:
    train.epochs); no calibration, since the base model only pseudo-labels the pool (the gate judges the final
    Trainer's model); under semi.pseudo_label.init=base the final Trainer starts from its classifier weights (every
    Trainer keeps them beside its SavedModel)."""
    base_train = cfg.train if cfg.semi.pseudo_label.base_epochs is None else dataclasses.replace(
        cfg.train, epochs=cfg.semi.pseudo_label.base_epochs)
    base_cfg = dataclasses.replace(cfg, semi=SemiConfig(method=modes.SUPERVISED), calibration=CalibrationConfig(),
                                   train=base_train)
    return training_job(base_cfg, manifest, pipeline_root, data_dir)


def pretrain_job(cfg: PipelineConfig, manifest: dict, pipeline_root: str) -> TrainerJob:
    """The pre-training Trainer's job: only what the pre-training depends on (its cache key leaves the supervised
    settings out), and how it runs (train.distribute, train.local_workers, ...: models.config.DistributeConfig) where
    that differs from the defaults, so a default job's stored JSON, hence its cache, is what it was."""
    how = DistributeConfig.of(cfg.train)
    return TrainerJob(stage=trainer_job.PRETRAIN, pretrain=cfg.pretrain, backbone=cfg.train.backbone,
                      image_shape=manifest["image_shape"], distribute=None if how == DistributeConfig() else how,
                      ).with_backup(pipeline_root, manifest.get("splits"))


def create_pipeline(cfg: PipelineConfig, data_dir: str, manifest: dict, pipeline_root: str, metadata_path: str | None,
                    serving_dir: str, beam_pipeline_args: list[str] | None = None,
                    own_data_spec: SplitSpec | None = None) -> tfx.dsl.Pipeline:
    """The classification DAG. ``manifest``: a prepared folder's (ImportExampleGen reads ``data_dir``), or, when its
    ``ingestion`` key is OwnDataExampleGen's, the plan of a user's folder / TFRecords, which the pipeline ingests
    itself from ``manifest["source"]`` with ``own_data_spec``'s split settings."""
    has_pool = manifest["splits"]["unlabeled"]["num_examples"] > 0
    own_data = manifest.get("ingestion") == OWN_DATA_INGESTION
    if own_data:  # a user's folder / TFRecords, ingested by the pipeline itself every run (one artifact, all splits)
        labeled_gen = OwnDataExampleGen(
            source=manifest["source"], split_spec=own_data_spec, class_names=manifest["class_names"],
            image_fit=manifest["image_fit"], with_pool=has_pool,
            pool_from_source=manifest.get("pool_from_source", False),
            spans=(manifest.get("spans") or {}).get("setting"))
        labeled_examples = labeled_gen.outputs["examples"]
        unlabeled_gens, unlabeled_source = [], labeled_examples if has_pool else None
    else:  # a prepared folder (prepare-data)
        labeled_gen = _example_gen(data_dir, {"train": "labeled/*", "eval": "validation/*", "test": "test/*"},
                                   "LabeledExampleGen")
        labeled_examples = labeled_gen.outputs["examples"]
        unlabeled_gens = [_example_gen(data_dir, {"unlabeled": "unlabeled/*"}, "UnlabeledExampleGen")] if has_pool else []
        unlabeled_source = unlabeled_gens[0].outputs["examples"] if has_pool else None
    labeled_nodes, labeled_schema, labeled_check = _validated(
        labeled_examples, os.path.join(SCHEMA_DIR, "labeled.pbtxt"), "Labeled", "labeled",
        exclude_splits=["unlabeled"] if own_data and has_pool else None, num_classes=int(manifest["num_classes"]))
    components = [labeled_gen, *labeled_nodes]

    unlabeled_examples, upstream_checks = None, [labeled_check]
    if has_pool:
        unlabeled_nodes, _, unlabeled_check = _validated(
            unlabeled_source, os.path.join(SCHEMA_DIR, "unlabeled.pbtxt"), "Unlabeled", "unlabeled",
            exclude_splits=["train", "eval", "test"] if own_data else None)
        components += [*unlabeled_gens, *unlabeled_nodes]
        unlabeled_examples = unlabeled_source
        upstream_checks.append(unlabeled_check)

    stats_gen = LabelStatsGen(
        examples=labeled_gen.outputs["examples"], unlabeled_examples=unlabeled_examples,
        num_classes=manifest["num_classes"], class_names=manifest["class_names"], image_shape=manifest["image_shape"],
        many_shot_threshold=cfg.stats.many_shot_threshold, few_shot_threshold=cfg.stats.few_shot_threshold,
        effective_number_beta=cfg.stats.effective_number_beta)
    for check in upstream_checks:  # no statistics, hence no training, from data that failed validation
        stats_gen.add_upstream_node(check)

    pretrainer = None
    if cfg.pretrain.method != "none":
        with_unlabeled = cfg.pretrain.data == "labeled+unlabeled"
        if with_unlabeled and unlabeled_examples is None:
            raise PipelineDataError("unlabeled", "pretrain.data=labeled+unlabeled but the unlabeled pool is empty", 0)
        pretrainer = SSPPretrainer(
            examples=labeled_gen.outputs["examples"], unlabeled_examples=unlabeled_examples if with_unlabeled else None,
            run_fn=PRETRAIN_RUN_FN, job=pretrain_job(cfg, manifest, pipeline_root))
        for check in upstream_checks:  # no pre-training on data that failed validation either
            pretrainer.add_upstream_node(check)
        components.append(pretrainer)

    mode = cfg.semi.mode
    truth_dir = None if own_data else data_dir  # the pool's true classes exist only in a prepared folder
    if mode.pool == modes.POOL_REQUIRED and unlabeled_examples is None:
        usable = sorted(m.name for m in modes.MODES.values() if m.pool != modes.POOL_REQUIRED)
        raise ValueError(f"semi.method={mode.name} needs an unlabeled pool, but {data_dir} has 0 unlabeled examples "
                         f"(set data.unlabeled_size, or semi.method={'|'.join(usable)})")
    base_model = pretrainer.outputs["model"] if pretrainer else None
    latest_blessed = _latest_blessed()
    # a retrain on data over time starts from the last blessed model (the gate's baseline): models/retrain.py
    warm = {WARM_START_MODEL_KEY: latest_blessed.outputs["model"]} if warm_starts_from_blessed(cfg, manifest) else {}
    pseudo_inputs = {}
    if mode.pseudo_labels and unlabeled_examples is not None:
        from_base = cfg.semi.pseudo_label.init == "base"  # the final model starts from the base model's weights
        base_trainer = PseudoLabelBaseTrainer(
            examples=labeled_gen.outputs["examples"], label_stats=stats_gen.outputs[LABEL_STATS_KEY],
            schema=labeled_schema.outputs["schema"], run_fn=RUN_FN, base_model=base_model,
            job=pseudo_label_base_job(cfg, manifest, pipeline_root, truth_dir), **warm).with_id("BaseTrainer")
        labeler = PseudoLabeler(
            model=base_trainer.outputs["model"], unlabeled_examples=unlabeled_examples, examples=labeled_gen.outputs["examples"],
            num_classes=manifest["num_classes"], confidence_threshold=cfg.semi.pseudo_label.threshold,
            top_k_per_class=cfg.semi.pseudo_label.top_k, eval_split="eval", prior_adjustment=cfg.semi.pseudo_label.prior,
            prior_strength=cfg.semi.pseudo_label.prior_strength)
        components += [base_trainer, labeler]
        pseudo_inputs = {PSEUDO_LABELED_EXAMPLES_KEY: labeler.outputs[PSEUDO_LABELED_EXAMPLES_KEY],
                         PSEUDO_LABEL_STATS_KEY: labeler.outputs[PSEUDO_LABELER_STATISTICS_KEY],
                         **({INIT_MODEL_KEY: base_trainer.outputs["model"]} if from_base else {})}
    trainer = LongTailTrainer(
        examples=labeled_gen.outputs["examples"], label_stats=stats_gen.outputs[LABEL_STATS_KEY],
        schema=labeled_schema.outputs["schema"], run_fn=RUN_FN, base_model=base_model,
        job=training_job(cfg, manifest, pipeline_root, truth_dir),
        unlabeled_examples=unlabeled_examples if mode.online_pool else None, **pseudo_inputs, **warm)

    # calibrated: the gate judges the half of the eval split the offsets were not fitted on (models/calibration.py)
    gate_and_push = _gate_and_push(PerClassEvaluator, labeled_gen.outputs["examples"], trainer, stats_gen, cfg.gate,
                                   serving_dir, latest_blessed, holdout=cfg.calibration.enabled,
                                   unlabeled_examples=unlabeled_examples)  # the shift report's pool
    components += [stats_gen, trainer, *gate_and_push]
    return _pipeline(cfg.name, pipeline_root, components, cfg.enable_cache, metadata_path, beam_pipeline_args)


def _latest_blessed():
    return tfx.dsl.Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("LatestBlessedModelResolver")


def _gate_and_push(evaluator_class, examples, trainer, stats_gen, thresholds, serving_dir: str, latest_blessed=None,
                   **evaluator_args) -> list:
    """Resolver(latest blessed model) -> the gate (eval split decides, test split reported) -> LongTailPusher."""
    latest_blessed = latest_blessed or _latest_blessed()
    evaluator = evaluator_class(
        examples=examples, model=trainer.outputs["model"], baseline_model=latest_blessed.outputs["model"],
        label_stats=stats_gen.outputs[LABEL_STATS_KEY], thresholds=thresholds, eval_split="eval", report_split="test",
        **evaluator_args)
    # the version served now is part of the Pusher's cache key: a push is never taken from the cache once the
    # folder has changed (a rollback, a version removed by hand), since the cached push would name a stale version
    served = newest_version(serving_dir) if "://" not in serving_dir else None
    pusher = LongTailPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir)),
        custom_config={"served_version": os.path.basename(served) if served else None})
    return [latest_blessed, evaluator, pusher]


def _pipeline(name: str, pipeline_root: str, components: list, enable_cache: bool, metadata_path: str | None,
              beam_pipeline_args: list[str] | None) -> tfx.dsl.Pipeline:
    return tfx.dsl.Pipeline(
        pipeline_name=name,
        pipeline_root=pipeline_root,
        components=components,
        enable_cache=enable_cache,
        metadata_connection_config=(tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
                                    if metadata_path else None),
        beam_pipeline_args=beam_pipeline_args or [],
    )


# --- task=regression: the Chicago taxi CSV ---------------------------------------------------------
#
# csv folder -> CsvExampleGen (hash split train:eval:test) -> StatisticsGen -> ExampleValidator
#   (schemas/chicago_taxi.pbtxt) -> AnomalyCheck -> RegressionLabelStatsGen (Beam: histogram, bad rows,
#   LDS weights, bin groups) -> LongTailTrainer (run_fn: models.regression.run_fn)
# Resolver(latest blessed model) + trainer model -> RegressionEvaluator (gate) -> Pusher

REGRESSION_RUN_FN = "models.regression.run_fn"
REGRESSION_SPLITS = ("train", "eval", "test")


def default_csv_dir() -> str:
    """The Chicago taxi trips CSV folder inside the installed tfx package (15,002 rows)."""
    return os.path.join(os.path.dirname(tfx_package.__file__), "examples", "chicago_taxi_pipeline", "data", "simple")


def regression_job(cfg: PipelineConfig, csv_dir: str, pipeline_root: str) -> TrainerJob:
    """The regression Trainer's job; as the classification Trainer's, its backup folder is stable across
    re-executions on the same CSV files."""
    return TrainerJob(stage=trainer_job.REGRESSION, train=cfg.train, regression=cfg.regression).with_backup(
        pipeline_root, trainer_job.folder_identity(csv_dir))


def create_regression_pipeline(cfg: PipelineConfig, csv_dir: str, pipeline_root: str, metadata_path: str | None,
                               serving_dir: str, beam_pipeline_args: list[str] | None = None,
                               pipeline_name: str | None = None) -> tfx.dsl.Pipeline:
    buckets = [int(b) for b in cfg.regression.split_buckets.split(",")]
    if len(buckets) != 3 or min(buckets) < 1:
        raise ValueError(f"regression.split_buckets must be three positive integers (train,eval,test), got "
                         f"{cfg.regression.split_buckets!r}")
    output = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=b) for n, b in zip(REGRESSION_SPLITS, buckets)]))
    example_gen = tfx.components.CsvExampleGen(input_base=csv_dir, output_config=output)
    nodes, schema, check = _validated(example_gen.outputs["examples"], os.path.join(SCHEMA_DIR, "chicago_taxi.pbtxt"),
                                      "", "taxi")
    stats_gen = RegressionLabelStatsGen(examples=example_gen.outputs["examples"], regression=cfg.regression,
                                        splits=REGRESSION_SPLITS)
    stats_gen.add_upstream_node(check)
    trainer = LongTailTrainer(
        examples=example_gen.outputs["examples"], label_stats=stats_gen.outputs[LABEL_STATS_KEY],
        schema=schema.outputs["schema"], run_fn=REGRESSION_RUN_FN, job=regression_job(cfg, csv_dir, pipeline_root))
    gate_and_push = _gate_and_push(RegressionEvaluator, example_gen.outputs["examples"], trainer, stats_gen,
                                   cfg.regression_gate, serving_dir)
    components = [example_gen, *nodes, stats_gen, trainer, *gate_and_push]
    return _pipeline(pipeline_name or f"{cfg.name}-{cfg.regression.target}", pipeline_root, components,
                     cfg.enable_cache, metadata_path, beam_pipeline_args)
