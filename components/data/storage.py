"""Folders named by a URI (``gs://``, ``s3://``, ``file://``, any filesystem TensorFlow's GFile knows) beside local
ones: what a Kubeflow package's data needs, since its pods read it from cluster storage.

Hand-written on tf.io.gfile because neither TFX's fileio nor GFile copies a folder tree, and the copy must write the
manifest last: a folder holds a manifest.json only once every file it lists is there (as prepare's _staged does
locally)."""

from __future__ import annotations

import os


def is_uri(path: str) -> bool:
    return "://" in str(path)


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def read_text(path: str) -> str:
    if not is_uri(path):
        with open(path) as f:
            return f.read()
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return f.read()


def copy_folder(src: str, dst: str, last: str, log=None) -> int:
    """Copy the local folder ``src`` to ``dst`` (a URI or a path), the file ``last`` (its relative path: a prepared
    folder's manifest.json) after every other; the number of files. A file already at ``dst`` is overwritten."""
    import tensorflow as tf

    files = []
    for root, _, names in os.walk(src):
        files += [os.path.relpath(os.path.join(root, n), src) for n in names]
    files.sort(key=lambda rel: (rel == last, rel))
    for rel in files:
        target = os.path.join(dst, rel)
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(os.path.join(src, rel), target, overwrite=True)
    if log:
        log(f"[data] copied {len(files)} files of {src} to {dst}")
    return len(files)
