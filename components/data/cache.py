"""Where prepared data lives and how a caller gets it: the cache key, the split settings of a configuration, and the
locked prepare-or-reuse that `python -m pipeline prepare-data` and `python -m pipeline run` both go through.

A prepared folder is keyed by every setting (``default_data_dir``), so two callers asking for the same data ask for
the same folder. ``ensure_prepared`` holds an exclusive ``fcntl.flock`` on ``<out>.lock`` while it checks and
prepares: a second process waits for the first, then finds its manifest and reuses the folder instead of writing it
again. The lock file stays (an empty file): removing it would let a third process lock a fresh file while a second
still waits on the old one.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import sys
import tempfile

from components.data import storage
from components.data.longtail import SplitSpec
from components.data.prepare import FORMAT_VERSION, MANIFEST, prepare_from_source
from components.data.sources import IMAGE_SETTINGS

DATA_ROOT = "data"
FITTED_SOURCES = ("folder", "tfrecord")  # the sources of encoded images, fitted to image_settings


def parse_order(text: str):
    """A class order setting: "index", "shuffle", "same", "reversed", or comma-separated class ids -> a tuple."""
    if text in ("index", "shuffle", "same", "reversed"):
        return text
    return tuple(int(c) for c in text.split(","))


def spec_from_data_config(data) -> SplitSpec:
    """The split settings of a DataConfig (pipeline/configs.py; anything with its fields), orders parsed."""
    return SplitSpec(rho=data.rho, n_max=data.n_max, class_order=parse_order(data.class_order),
                     val_per_class=data.val_per_class, rho_u=data.rho_u, unlabeled_size=data.unlabeled_size,
                     unlabeled_order=parse_order(data.unlabeled_order), pool_relevance=data.pool_relevance,
                     seed=data.seed)


def default_data_dir(source: str, spec: SplitSpec, shard_size: int = 10000, image_settings=IMAGE_SETTINGS) -> str:
    """A readable name plus a hash of every setting, so different settings never share a folder."""
    settings = dataclasses.asdict(spec)
    if settings["pool_relevance"] == 1.0:  # the default: the knob adds nothing to the key
        del settings["pool_relevance"]
    if source.partition(":")[0] in FITTED_SOURCES:  # decoded by models/image_fit.py since 2026-12-07 (was Pillow)
        settings["image_settings"] = list(image_settings)
    key = json.dumps({"source": source, "shard_size": shard_size, "format_version": FORMAT_VERSION, **settings},
                     sort_keys=True, default=list)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("_")[:40]
    rho = "natural" if spec.rho is None else f"{spec.rho:g}"
    return os.path.join(DATA_ROOT, f"{slug}-rho{rho}-seed{spec.seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")


def _is_prepared(out: str) -> bool:
    return os.path.exists(os.path.join(out, MANIFEST))  # written last, inside the folder renamed into place


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_prepared(source: str, spec: SplitSpec, source_dir: str | None = None, out: str | None = None,
                    shard_size: int = 10000, force: bool = False, log=_stderr, image_settings=IMAGE_SETTINGS) -> str:
    """The folder of ``source`` prepared with ``spec``: ``out``, or ``default_data_dir`` when None; prepared now
    unless it already holds a manifest (``force``: prepared again all the same). ``image_settings``: (data.image_size,
    data.channels, data.image_fit), which a folder's or TFRecords' images are fitted to.

    Concurrent callers for one folder take turns on ``<out>.lock``; one that waited re-checks the manifest and
    reuses what the first wrote. Returns ``out`` as given (or the default, relative to the working directory).
    """
    out = out or default_data_dir(source, spec, shard_size, image_settings)
    if storage.is_uri(out):  # cluster storage (gs://, file://): prepared here, then copied there, manifest last
        if not force and storage.exists(os.path.join(out, MANIFEST)):
            log(f"[prepare-data] {out} is prepared; reusing it")
            return out
        with tempfile.TemporaryDirectory(prefix="prepare-") as tmp:
            local = os.path.join(tmp, os.path.basename(out.rstrip("/")) or "data")
            log(f"[prepare-data] preparing {out} (in {local} first)")
            prepare_from_source(source, spec, local, source_dir, shard_size, image_settings)
            storage.copy_folder(local, out, MANIFEST, log)
        return out
    if not force and _is_prepared(out):
        log(f"[prepare-data] {out} is prepared; reusing it")
        return out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out.rstrip("/") + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[prepare-data] waiting for another process preparing {out}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and _is_prepared(out):  # the other process (waited for, or just done) prepared it
            log(f"[prepare-data] {out} is prepared; reusing it")
            return out
        log(f"[prepare-data] preparing {out}")
        prepare_from_source(source, spec, out, source_dir, shard_size, image_settings)
    return out  # closing the file releases the lock
