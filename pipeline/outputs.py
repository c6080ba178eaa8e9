"""Reading a finished run's artifacts back from MLMD (the run's pipeline_run context)."""

from __future__ import annotations

import json
import os

from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata

from components.artifacts import (
    EVALUATION_FILE,
    LABEL_STATS_FILE,
    PSEUDO_LABEL_STATS_FILE,
    LabelStatistics,
    PseudoLabelStatistics,
)
from models.job import TRAINING_SUMMARY_FILE
from models.ssp import SUMMARY_FILE as SSP_SUMMARY_FILE

OUTPUT_EVENTS = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)


def latest_run_outputs(metadata_path: str) -> dict:
    """The newest run: ``executions`` {execution type name: {"state": ..., "outputs": {artifact type name: [artifact]}}}
    and ``components``, each node's id, final state and seconds (MLMD's create to last update), in the order they
    started."""
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(metadata_path)) as m:
        store = m.store
        runs = store.get_contexts_by_type("pipeline_run")
        if not runs:
            raise RuntimeError(f"no pipeline run recorded in {metadata_path}")
        run = max(runs, key=lambda c: c.id)
        executions = store.get_executions_by_context(run.id)
        types = {t.id: t.name for t in store.get_execution_types()}
        artifact_types = {t.id: t.name for t in store.get_artifact_types()}
        node_type = next((t.id for t in store.get_context_types() if t.name == "node"), None)
        result, components = {}, []
        for execution in sorted(executions, key=lambda e: (e.create_time_since_epoch, e.id)):
            state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
            node = next((c.name.split(".", 1)[-1] for c in store.get_contexts_by_execution(execution.id)
                         if c.type_id == node_type), types[execution.type_id])
            components.append({"component": node, "state": state, "seconds": round(
                (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000, 1)})
            events = [e for e in store.get_events_by_execution_ids([execution.id]) if e.type in OUTPUT_EVENTS]
            artifacts = store.get_artifacts_by_id([e.artifact_id for e in events]) if events else []
            outputs: dict[str, list] = {}
            for a in artifacts:
                outputs.setdefault(artifact_types[a.type_id], []).append(a)
            result[types[execution.type_id]] = {"state": state, "outputs": outputs}
        return {"run_id": run.name, "executions": result, "components": components}


TRAINER = "components.trainer.LongTailTrainer"
PRETRAINER = "components.trainer.SSPPretrainer"
BASE_TRAINER = "components.trainer.PseudoLabelBaseTrainer"
PSEUDO_LABELER = "components.pseudo_labeler.PseudoLabeler"
OWN_DATA_GEN = "components.own_data_example_gen.OwnDataExampleGen"


def find_output(run: dict, artifact_type: str, execution_type: str | None = None):
    for name, info in run["executions"].items():
        if execution_type is not None and name != execution_type:
            continue
        if artifact_type in info["outputs"]:
            return info["outputs"][artifact_type][-1]
    return None


def read_json_artifact(artifact, filename: str) -> dict:
    with open(os.path.join(artifact.uri, filename)) as f:
        return json.load(f)


def run_results(metadata_path: str) -> dict:
    run = latest_run_outputs(metadata_path)
    evaluation = find_output(run, "ModelEvaluation")
    stats = find_output(run, LabelStatistics.TYPE_NAME)
    model_run = find_output(run, "ModelRun", TRAINER)
    pretrain_run = find_output(run, "ModelRun", PRETRAINER)
    base_run = find_output(run, "ModelRun", BASE_TRAINER)
    base_model = find_output(run, "Model", BASE_TRAINER)
    pl_stats = find_output(run, PseudoLabelStatistics.TYPE_NAME)
    pl_examples = find_output(run, "Examples", PSEUDO_LABELER)
    pushed = find_output(run, "PushedModel")
    own_data = find_output(run, "Examples", OWN_DATA_GEN)
    own_data_report = os.path.join(own_data.uri, "ingest_report.json") if own_data else None
    result = {
        "run_id": run["run_id"],
        "executions": {k: v["state"] for k, v in run["executions"].items()},
        "components": run["components"],
        "evaluation": read_json_artifact(evaluation, EVALUATION_FILE) if evaluation else None,
        "label_stats": read_json_artifact(stats, LABEL_STATS_FILE) if stats else None,
        "training": read_json_artifact(model_run, TRAINING_SUMMARY_FILE) if model_run else None,
        "model_run_dir": model_run.uri if model_run else None,
        "ssp": read_json_artifact(pretrain_run, SSP_SUMMARY_FILE) if pretrain_run else None,
        "base_training": read_json_artifact(base_run, TRAINING_SUMMARY_FILE) if base_run else None,
        "pseudo_label_stats": read_json_artifact(pl_stats, PSEUDO_LABEL_STATS_FILE) if pl_stats else None,
        "pseudo_labeled_examples_uri": pl_examples.uri if pl_examples else None,
        # OwnDataExampleGen's own account of what it ingested (duplicates across splits, problems, non-images)
        "ingest_report": read_json_artifact(own_data, "ingest_report.json")
        if own_data_report and os.path.exists(own_data_report) else None,
        "base_model_uri": base_model.uri if base_model else None,
        "pushed": bool(pushed and pushed.custom_properties["pushed"].int_value == 1),
        "pushed_model_dir": (pushed.custom_properties["pushed_destination"].string_value
                             if pushed and "pushed_destination" in pushed.custom_properties else None),
        "already_serving": bool(pushed and "already_serving" in pushed.custom_properties
                                and pushed.custom_properties["already_serving"].int_value == 1),
    }
    return result
