"""Rollback: make an earlier pushed version the one served again, and the pipeline's baseline.

Two records change, so that serving and the next gate agree:

- the serving folder gets a new highest version, a copy of the chosen one (TF Serving, KServe and
  ``python -m pipeline serve`` load the highest number; the bad version stays on disk, served by no one);
- in every MLMD that pushed to that folder, each ModelBlessing of a model newer than the restored one is set to
  ``blessed=0`` with ``rolled_back_at`` / ``rolled_back_to_version`` beside it, so TFX's LatestBlessedModelStrategy
  (the gate's baseline resolver) returns the restored model and the next run is compared with it, not with the bad
  one. TFX has no rollback of its own; this is the smallest change to MLMD that its resolver honours.

The restored version is found in MLMD by content: the PushedModel whose destination holds the same SavedModel bytes
(components.pusher.saved_model_digest), then the Model that its Pusher execution read.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time

from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.io import fileio
from tfx.orchestration import metadata

from components.pusher import PARTIAL, copy_model, saved_model_digest
from models.export import serving_metadata


class RollbackError(ValueError):
    """Nothing to roll back to, a version that does not exist, or one no local pipeline pushed."""


@dataclasses.dataclass(frozen=True)
class Rollback:
    model_dir: str
    from_version: str
    to_version: str
    new_version: str
    restored_model_uri: str
    metadata_path: str
    unblessed_model_uris: tuple[str, ...]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def versions(base: str) -> list[str]:
    """The complete version folders under ``base``, oldest (smallest number) first."""
    names = [n.rstrip("/") for n in fileio.listdir(base)] if fileio.exists(base) else []
    return sorted((n for n in names if n.isdigit()), key=int)


def _pushes(store) -> list[tuple[metadata_store_pb2.Artifact, metadata_store_pb2.Artifact]]:
    """(PushedModel, the Model its Pusher read) for every push recorded in ``store``."""
    out = []
    for pushed in store.get_artifacts_by_type("PushedModel"):
        if pushed.custom_properties["pushed"].int_value != 1 or "pushed_destination" not in pushed.custom_properties:
            continue
        events = store.get_events_by_artifact_ids([pushed.id])
        execution_ids = [e.execution_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
        inputs = [e.artifact_id for e in store.get_events_by_execution_ids(execution_ids)
                  if e.type == metadata_store_pb2.Event.INPUT]
        model_type = store.get_artifact_type("Model").id
        models = [a for a in store.get_artifacts_by_id(inputs) if a.type_id == model_type]
        if models:
            out.append((pushed, models[0]))
    return out


def _find_model(stores: list[str], base: str, digest: str):
    """(MLMD path, Model artifact) that was pushed to ``base`` with these SavedModel bytes (the newest such model)."""
    found = None
    digests: dict[str, str] = {}
    for path in stores:
        with metadata.Metadata(metadata.sqlite_metadata_connection_config(path)) as m:
            for pushed, model in _pushes(m.store):
                dest = pushed.custom_properties["pushed_destination"].string_value
                if os.path.dirname(os.path.normpath(dest)) != os.path.normpath(base) or not fileio.exists(dest):
                    continue
                if dest not in digests:
                    digests[dest] = saved_model_digest(dest)
                if digests[dest] == digest and (found is None or model.id > found[1].id):
                    found = (path, model)
    return found


def local_stores(runs_root: str) -> list[str]:
    """Every local pipeline's MLMD (``<runs_root>/_tfx/<pipeline>/metadata.sqlite``)."""
    return sorted(glob.glob(os.path.join(os.path.abspath(runs_root), "_tfx", "*", "metadata.sqlite")))


def rollback(base: str, stores: list[str], to_version: str | None = None) -> Rollback:
    """Serve ``to_version`` of ``base`` again (default: the newest version whose model differs from the one served)
    as a new highest version, and make its model the last blessed one in the MLMD that pushed it."""
    base = os.path.abspath(base)
    have = versions(base)
    if not have:
        raise RollbackError(f"{base} holds no model version to roll back")
    current = have[-1]
    current_digest = saved_model_digest(os.path.join(base, current))
    if to_version is None:
        older = [v for v in reversed(have[:-1]) if saved_model_digest(os.path.join(base, v)) != current_digest]
        if not older:
            raise RollbackError(f"{base}: every version serves the same model as the newest ({current}); nothing to "
                                "roll back to")
        to_version = older[0]
    elif to_version not in have:
        raise RollbackError(f"{base} has no version {to_version}; it has {', '.join(have)}")
    target = os.path.join(base, to_version)
    target_digest = saved_model_digest(target)
    if target_digest == current_digest:
        raise RollbackError(f"{base}: version {to_version} is the model already served (version {current})")
    ours = (serving_metadata(target) or {}).get("class_names")
    theirs = (serving_metadata(os.path.join(base, current)) or {}).get("class_names")
    if ours is not None and theirs is not None and list(ours) != list(theirs):
        raise RollbackError(f"{base}: version {to_version} serves classes {list(ours)}, the served version {current} "
                            f"serves {list(theirs)}; clients of this folder would swap label space. Serve it from a "
                            "folder of its own instead")
    found = _find_model(stores, base, target_digest)
    if found is None:
        raise RollbackError(f"{base}: version {to_version} was pushed by none of the {len(stores)} local pipelines' "
                            f"MLMD ({', '.join(stores) or 'none found'}), so the next gate's baseline could not follow "
                            "it; nothing was changed")
    metadata_path, restored = found
    new_version = max(int(time.time()), int(current) + 1)
    while fileio.exists(os.path.join(base, str(new_version))):
        new_version += 1
    partial = os.path.join(base, f"{new_version}{PARTIAL}")
    copy_model(target, partial)
    fileio.rename(partial, os.path.join(base, str(new_version)))
    unblessed = []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(metadata_path)) as m:
        store = m.store
        newer = []
        for blessing in store.get_artifacts_by_type("ModelBlessing"):
            model_id = blessing.custom_properties["current_model_id"].int_value
            if blessing.custom_properties["blessed"].int_value == 1 and model_id > restored.id:
                blessing.custom_properties["blessed"].int_value = 0
                blessing.custom_properties["rolled_back_at"].string_value = stamp
                blessing.custom_properties["rolled_back_to_version"].string_value = to_version
                newer.append(blessing)
                unblessed.append(model_id)
        if newer:
            store.put_artifacts(newer)
        uris = tuple(a.uri for a in store.get_artifacts_by_id(sorted(set(unblessed)))) if unblessed else ()
    return Rollback(model_dir=base, from_version=current, to_version=to_version, new_version=str(new_version),
                    restored_model_uri=restored.uri, metadata_path=metadata_path, unblessed_model_uris=uris)
