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
from tfx.orchestration import metadata

from components.pusher import LabelSpaceError, check_same_label_space, saved_model_digest, versions, write_version


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


def _pushes(store) -> list[tuple[metadata_store_pb2.Artifact, metadata_store_pb2.Artifact]]:
    """(PushedModel, the Model its Pusher read) for every push recorded in ``store``."""
    model_type = store.get_artifact_type("Model").id
    out = []
    for pushed in store.get_artifacts_by_type("PushedModel"):
        if pushed.custom_properties["pushed"].int_value != 1 or "pushed_destination" not in pushed.custom_properties:
            continue
        events = store.get_events_by_artifact_ids([pushed.id])
        execution_ids = [e.execution_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
        inputs = [e.artifact_id for e in store.get_events_by_execution_ids(execution_ids)
                  if e.type == metadata_store_pb2.Event.INPUT]
        models = [a for a in store.get_artifacts_by_id(inputs) if a.type_id == model_type]
        if models:
            out.append((pushed, models[0]))
    return out


def _find_model(stores: list[str], base: str, same: set[str]):
    """(MLMD path, Model artifact) of the newest model pushed to one of the versions ``same`` of ``base`` (the
    versions holding the restored bytes)."""
    found = None
    for path in stores:
        with metadata.Metadata(metadata.sqlite_metadata_connection_config(path)) as m:
            for pushed, model in _pushes(m.store):
                dest = os.path.normpath(pushed.custom_properties["pushed_destination"].string_value)
                if os.path.dirname(dest) == base and os.path.basename(dest) in same and (
                        found is None or model.id > found[1].id):
                    found = (path, model)
    return found


def local_stores(runs_root: str) -> list[str]:
    """Every local pipeline's MLMD (``<runs_root>/_tfx/<pipeline>/metadata.sqlite``)."""
    return sorted(glob.glob(os.path.join(os.path.abspath(runs_root), "_tfx", "*", "metadata.sqlite")))


def rollback(base: str, stores: list[str], to_version: str | None = None) -> Rollback:
    """Serve ``to_version`` of ``base`` again (default: the newest version whose model differs from the one served)
    as a new highest version, and make its model the last blessed one in the MLMD that pushed it."""
    base = os.path.normpath(os.path.abspath(base))
    have = versions(base)
    if not have:
        raise RollbackError(f"{base} holds no model version to roll back")
    current = have[-1]
    digests = {v: saved_model_digest(os.path.join(base, v)) for v in have}
    if to_version is None:
        older = [v for v in reversed(have[:-1]) if digests[v] != digests[current]]
        if not older:
            raise RollbackError(f"{base}: every version serves the same model as the newest ({current}); nothing to "
                                "roll back to")
        to_version = older[0]
    elif to_version not in have:
        raise RollbackError(f"{base} has no version {to_version}; it has {', '.join(have)}")
    if digests[to_version] == digests[current]:
        raise RollbackError(f"{base}: version {to_version} is the model already served (version {current})")
    target = os.path.join(base, to_version)
    try:
        check_same_label_space(target, base)
    except LabelSpaceError as e:
        raise RollbackError(f"not rolling back to version {to_version}: {e}") from None
    found = _find_model(stores, base, {v for v in have if digests[v] == digests[to_version]})
    if found is None:
        raise RollbackError(f"{base}: version {to_version} was pushed by none of the {len(stores)} local pipelines' "
                            f"MLMD ({', '.join(stores) or 'none found'}), so the next gate's baseline could not follow "
                            "it; nothing was changed")
    metadata_path, restored = found
    new_version = os.path.basename(write_version(target, base, at_least=int(current) + 1))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(metadata_path)) as m:
        store = m.store
        newer = [b for b in store.get_artifacts_by_type("ModelBlessing")
                 if b.custom_properties["blessed"].int_value == 1
                 and b.custom_properties["current_model_id"].int_value > restored.id]
        for blessing in newer:
            blessing.custom_properties["blessed"].int_value = 0
            blessing.custom_properties["rolled_back_at"].string_value = stamp
            blessing.custom_properties["rolled_back_to_version"].string_value = to_version
        if newer:
            store.put_artifacts(newer)
        model_ids = sorted({b.custom_properties["current_model_id"].int_value for b in newer})
        uris = tuple(a.uri for a in store.get_artifacts_by_id(model_ids)) if model_ids else ()
    return Rollback(model_dir=base, from_version=current, to_version=to_version, new_version=new_version,
                    restored_model_uri=restored.uri, metadata_path=metadata_path, unblessed_model_uris=uris)
