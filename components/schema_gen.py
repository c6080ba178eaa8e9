"""LabelDomainSchemaGen: the labeled examples' schema with the label's domain set to the data at hand.

``schemas/labeled.pbtxt`` cannot know how many classes a data set has, so its label has only ``min: 0``. This
component writes that schema with ``int_domain { min: 0 max: C-1 is_categorical: true }``: StatisticsGen (given
the schema) then counts every class as a category, and ExampleValidator flags a label outside [0, C-1] as an
anomaly, which AnomalyCheck turns into a stopped run naming the split. The schema travels as text in the
component's parameters, so a compiled Kubeflow package needs no schema file on the cluster.
"""

import os

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils

SCHEMA_FILE = "schema.pbtxt"  # the name ImportSchemaGen writes and TFX's schema readers look for


def label_domain_schema(schema_text: str, num_classes: int, label: str = "label") -> schema_pb2.Schema:
    """``schema_text`` with ``label``'s int domain [0, num_classes-1], categorical; a schema without it is an error."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    schema = text_format.Parse(schema_text, schema_pb2.Schema())
    features = [f for f in schema.feature if f.name == label]
    if not features:
        raise ValueError(f"the schema has no feature {label!r} (it has {[f.name for f in schema.feature]})")
    domain = features[0].int_domain
    domain.min, domain.max, domain.is_categorical = 0, num_classes - 1, True
    return schema


@component
def LabelDomainSchemaGen(schema: OutputArtifact[standard_artifacts.Schema], schema_text: Parameter[str],
                         num_classes: Parameter[int]) -> None:
    io_utils.write_pbtxt_file(os.path.join(schema.uri, SCHEMA_FILE), label_domain_schema(schema_text, num_classes))
