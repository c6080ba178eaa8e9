"""AnomalyCheck: stop the run when ExampleValidator found anomalies, naming each one.

ExampleValidator only records anomalies; nothing downstream refuses bad data by itself. This
component fails (and with it every component wired after it) with the split, the feature and
TFDV's description of each anomaly.
"""


import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

from components.errors import PipelineDataError


def read_anomalies(anomalies_artifact) -> list[str]:
    """One line per anomaly: 'split X, feature F: short description (description)'."""
    found = []
    splits = artifact_utils.decode_split_names(anomalies_artifact.split_names)
    for split in splits:
        path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split), "SchemaDiff.pb")
        proto = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
        for feature, info in sorted(proto.anomaly_info.items()):
            found.append(f"split {split}, feature '{feature}': {info.short_description} ({info.description})")
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            found.append(f"split {split}, dataset: {info.short_description} ({info.description})")
    return found


@component
def AnomalyCheck(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies], examples_name: Parameter[str]) -> None:
    found = read_anomalies(anomalies)
    if found:
        raise PipelineDataError(f"{examples_name} examples", f"failed schema validation, {len(found)} anomalies: "
                                + "; ".join(found))
