"""LongTailPusher: TFX's filesystem Pusher that does not push the same model twice.

A re-run with unchanged data and settings takes the Trainer's model from the cache, the gate
blesses it again (it is its own baseline), and the stock Pusher would copy it to a new version
folder: TF Serving would then reload an identical model. This executor compares the candidate's
SavedModel bytes with the versions already under the destination; on a match it records that
version as the push (``already_serving=1``) and copies nothing. Everything else is TFX's Pusher.
"""

from __future__ import annotations

import hashlib
import os

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils


def saved_model_digest(model_dir: str) -> str:
    """sha256 over every file of a SavedModel folder (relative paths and bytes)."""
    h = hashlib.sha256()
    for root, dirs, files in fileio.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, model_dir).encode() + b"\0")
            with fileio.open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


class Executor(pusher_executor.Executor):
    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") == "filesystem" and self.CheckBlessing(input_dict):
            base = destination.filesystem.base_directory
            if fileio.exists(base):
                digest = saved_model_digest(self.GetModelPath(input_dict))
                for version in sorted(fileio.listdir(base), reverse=True):
                    version = version.rstrip("/")
                    if saved_model_digest(os.path.join(base, version)) == digest:
                        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
                        logging.info("Model is already serving as version %s; nothing copied", version)
                        self._MarkPushed(model_push, pushed_destination=os.path.join(base, version), pushed_version=version)
                        model_push.set_int_custom_property("already_serving", 1)
                        return
        super().Do(input_dict, output_dict, exec_properties)


class LongTailPusher(pusher_component.Pusher):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
