"""`python -m pipeline prepare-data`: argument parsing and the default dataset location."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re

from components.data.longtail import SplitSpec

DATA_ROOT = "data"


def parse_order(text: str):
    if text in ("index", "shuffle", "same", "reversed"):
        return text
    return tuple(int(c) for c in text.split(","))


def _rho(text: str):
    if text.lower() == "auto":
        return "auto"
    return None if text.lower() in ("none", "natural") else float(text)


def _val(text: str):
    return text.lower() if text.lower() in ("auto", "none") else int(text)


# What "auto" means: the Fashion-MNIST benchmark's long tail (rho 100, 300 validation images a class) for the benchmark
# source; a user's own data (folder:, tfrecord:, tfds:) keeps its class distribution and gets a validation split sized
# to its smallest class (components/data/longtail.py:validation_per_class).
BENCHMARK_SOURCES = ("fashion_mnist",)


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="fashion_mnist",
                   help="fashion_mnist | folder:PATH | tfrecord:PATH | tfds:NAME (default: fashion_mnist)")
    p.add_argument("--source-dir", default=None, help="where the source's files are (Fashion-MNIST IDX dir, TFDS data dir)")
    p.add_argument("--out", default=None, help="output directory (default: data/<source>-rho<rho>-<settings hash>)")
    p.add_argument("--rho", type=_rho, default="auto", help="labeled imbalance ratio; 'none' keeps the source's own "
                                                          "(default auto: 100 for fashion_mnist, none for a user's data)")
    p.add_argument("--n-max", type=int, default=5000, help="labeled count of the head class (default 5000)")
    p.add_argument("--class-order", type=parse_order, default="index",
                   help="head-to-tail class order: index | shuffle | comma-separated ids (default index)")
    p.add_argument("--val-per-class", type=_val, default="auto",
                   help="balanced validation images per class; none: a fifth of the smallest class, at most 300 "
                        "(default auto: 300 for fashion_mnist, none for a user's data)")
    p.add_argument("--rho-u", type=float, default=1.0, help="imbalance ratio of the unlabeled pool (default 1: balanced)")
    p.add_argument("--unlabeled-size", type=int, default=None, help="pool size cap (default: as many as available)")
    p.add_argument("--unlabeled-order", type=parse_order, default="same", help="same | reversed | comma-separated ids")
    p.add_argument("--pool-relevance", type=float, default=1.0,
                   help="in-domain fraction of the unlabeled pool; the rest becomes MNIST digits (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=10000, help="records per TFRecord shard")
    p.add_argument("--force", action="store_true", help="rebuild even if the output exists")


def spec_from_args(a: argparse.Namespace) -> SplitSpec:
    benchmark = a.source in BENCHMARK_SOURCES
    rho = (100.0 if benchmark else None) if a.rho == "auto" else a.rho
    val = (300 if benchmark else None) if a.val_per_class == "auto" else (None if a.val_per_class == "none" else a.val_per_class)
    return SplitSpec(rho=rho, n_max=a.n_max, class_order=a.class_order, val_per_class=val,
                     rho_u=a.rho_u, unlabeled_size=a.unlabeled_size, unlabeled_order=a.unlabeled_order, seed=a.seed,
                     pool_relevance=a.pool_relevance)


def default_data_dir(source: str, spec: SplitSpec, shard_size: int = 10000) -> str:
    """A readable name plus a hash of every setting, so different settings never share a folder."""
    from components.data.prepare import FORMAT_VERSION

    settings = dataclasses.asdict(spec)
    if settings["pool_relevance"] == 1.0:  # the default: the knob adds nothing to the key
        del settings["pool_relevance"]
    key = json.dumps({"source": source, "shard_size": shard_size, "format_version": FORMAT_VERSION, **settings},
                     sort_keys=True, default=list)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source).strip("_")[:40]
    rho = "natural" if spec.rho is None else f"{spec.rho:g}"
    return os.path.join(DATA_ROOT, f"{slug}-rho{rho}-seed{spec.seed}-{hashlib.sha256(key.encode()).hexdigest()[:8]}")


def run_prepare(a: argparse.Namespace) -> str:
    from components.data.prepare import MANIFEST, prepare_from_source

    spec = spec_from_args(a)
    out = a.out or default_data_dir(a.source, spec, a.shard_size)
    if os.path.exists(os.path.join(out, MANIFEST)) and not a.force:
        print(f"[prepare-data] {out} exists; reusing it (--force rebuilds)")
        return out
    manifest = prepare_from_source(a.source, spec, out, a.source_dir, a.shard_size)
    for name, entry in manifest["splits"].items():
        counts = entry.get("per_class_counts") or entry.get("hidden_per_class_counts_from_train")
        print(f"[prepare-data] {name:<10} {entry['num_examples']:>6} examples  per class: {counts}")
    return out
