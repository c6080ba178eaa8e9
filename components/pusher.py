"""LongTailPusher: TFX's filesystem Pusher that does not push the same model twice.

A re-run with unchanged data and settings takes the Trainer's model from the cache, the gate
blesses it again (it is its own baseline), and the stock Pusher would copy it to a new version
folder: TF Serving would then reload an identical model. This executor compares the candidate's
SavedModel bytes with the newest version under the destination (the one served); on a match it records that
version as the push (``already_serving=1``) and copies nothing. A match with an older version is pushed again as a
new version: after a rollback (components/rollback.py) an older version is not what is served.

A filesystem push is atomic: the model is copied to ``<version>.partial`` beside the versions and renamed to
``<version>`` only when complete (TFX's Pusher copies into ``<version>`` directly, so a run killed mid-copy leaves a
half-written version that a server polling the folder could try to load). A ``*.partial`` folder left by a killed
push is removed by the next push and counted on its PushedModel (``removed_partial_pushes``). The rename is atomic
on a local or mounted filesystem; on an object store (gs://) it is a copy, after which saved_model.pb is still
written last, as TFX's Pusher does, so TF Serving and ``python -m pipeline serve`` never see a version without it.
Any other destination is TFX's Pusher.
"""

from __future__ import annotations

import hashlib
import os
import time

from absl import logging
from tfx import types
from tfx.components.pusher import component as pusher_component
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from models.export import serving_metadata


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


PARTIAL = ".partial"


def remove_partial_pushes(base: str) -> list[str]:
    """Remove the ``*.partial`` folders a killed push left under ``base``; their names."""
    removed = []
    for name in sorted(fileio.listdir(base)) if fileio.exists(base) else []:
        name = name.rstrip("/")
        if name.endswith(PARTIAL):
            fileio.rmtree(os.path.join(base, name))
            logging.warning("removed %s, left by a push that did not finish", os.path.join(base, name))
            removed.append(name)
    return removed


def copy_model(model_path: str, destination: str) -> None:
    """Every file but saved_model.pb, then saved_model.pb (a loader treats a folder without it as no model)."""
    io_utils.copy_dir(model_path, destination, deny_regex_patterns=[r"saved_model\.pb"])
    io_utils.copy_file(os.path.join(model_path, "saved_model.pb"), os.path.join(destination, "saved_model.pb"))


class LabelSpaceError(ValueError):
    """The serving folder's newest version serves other classes than the model to push."""


def versions(base: str) -> list[str]:
    """The complete version folders' names under ``base``, oldest (smallest number) first."""
    names = [n.rstrip("/") for n in fileio.listdir(base)] if fileio.exists(base) else []
    return sorted((n for n in names if n.isdigit()), key=int)


def newest_version(base: str) -> str | None:
    """The newest complete version folder under ``base`` (the largest number, as TF Serving picks it), or None."""
    numbered = versions(base)
    return os.path.join(base, numbered[-1]) if numbered else None


def write_version(model_path: str, base: str, at_least: int = 0) -> str:
    """Copy a SavedModel into a new version folder of ``base``, atomically (``<version>.partial``, then renamed);
    its path. The number is TFX's UNIX_TIMESTAMP versioning, at least ``at_least``, never a taken one."""
    version = max(int(time.time()), at_least)
    while fileio.exists(os.path.join(base, str(version))):
        version += 1
    serving_path = os.path.join(base, str(version))
    partial = serving_path + PARTIAL
    copy_model(model_path, partial)
    fileio.rename(partial, serving_path)
    return serving_path


def check_same_label_space(model_path: str, base: str) -> None:
    """Refuse to add a version that serves other classes than the folder's newest version: a server polling the folder
    (TF Serving, ``python -m pipeline serve``) would swap its clients to a model of another label space."""
    newest = newest_version(base)
    if newest is None:
        return
    theirs = (serving_metadata(newest) or {}).get("class_names")
    ours = (serving_metadata(model_path) or {}).get("class_names")
    if theirs is not None and ours is not None and list(theirs) != list(ours):
        raise LabelSpaceError(
            f"refusing to push to {base}: its newest version {os.path.basename(newest)} serves classes {list(theirs)}, "
            f"this model serves {list(ours)}; a server polling {base} would swap to a model of other classes. Push to "
            "a folder of its own (--set model_name=NAME, or serving_root=PATH)")


class Executor(pusher_executor.Executor):
    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem" or not self.CheckBlessing(input_dict):
            return super().Do(input_dict, output_dict, exec_properties)  # not blessed: TFX marks it not pushed
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        model_path = self.GetModelPath(input_dict)
        base = destination.filesystem.base_directory
        removed = remove_partial_pushes(base)
        model_push.set_int_custom_property("removed_partial_pushes", len(removed))
        newest = newest_version(base)
        # only the newest version is served: a match with an older one (e.g. the bad model a rollback replaced) is
        # pushed again as a new version
        if newest is not None and saved_model_digest(newest) == saved_model_digest(model_path):
            version = os.path.basename(newest)
            logging.info("Model is already serving as version %s; nothing copied", version)
            self._MarkPushed(model_push, pushed_destination=newest, pushed_version=version)
            model_push.set_int_custom_property("already_serving", 1)
            return
        check_same_label_space(model_path, base)
        serving_path = write_version(model_path, base)
        logging.info("Model written to serving path %s", serving_path)
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=os.path.basename(serving_path))


class LongTailPusher(pusher_component.Pusher):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)
