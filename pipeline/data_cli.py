"""`python -m pipeline prepare-data`: argument parsing only; preparing, the cache key and the default location are
components/data/cache.py's."""

from __future__ import annotations

import argparse

from components.data.cache import ensure_prepared, parse_order
from components.data.longtail import SplitSpec
from components.data.prepare import SPLITS, Manifest


def _rho(text: str):
    if text.lower() == "auto":
        return "auto"
    return None if text.lower() in ("none", "natural") else float(text)


def _val(text: str):
    return text.lower() if text.lower() in ("auto", "none") else int(text)


# What "auto" means: the Fashion-MNIST benchmark's long tail (rho 100, 300 validation images a class) for the benchmark
# source; a user's own data (folder:, tfrecord:, tfds:) keeps its class distribution and gets a validation split of a
# fifth of every class, at most 300 a class (components/data/longtail.py:validation_counts).
BENCHMARK_SOURCES = ("fashion_mnist",)


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="fashion_mnist",
                   help="fashion_mnist | folder:PATH | tfrecord:PATH | tfds:NAME (default: fashion_mnist)")
    p.add_argument("--source-dir", default=None, help="where the source's files are (Fashion-MNIST IDX dir, TFDS data dir)")
    p.add_argument("--out", default=None, help="output directory (default: data/<source>-rho<rho>-seed<seed>-<settings hash>)")
    p.add_argument("--rho", type=_rho, default="auto", help="labeled imbalance ratio; 'none' keeps the source's own "
                                                          "(default auto: 100 for fashion_mnist, none for a user's data)")
    p.add_argument("--n-max", type=int, default=5000, help="labeled count of the head class (default 5000)")
    p.add_argument("--class-order", type=parse_order, default="index",
                   help="head-to-tail class order: index | shuffle | comma-separated ids (default index)")
    p.add_argument("--val-per-class", type=_val, default="auto",
                   help="validation images per class (balanced); none: a fifth of every class, at least 1 and at "
                        "most 300 a class, so the split keeps the data's class mix (default auto: 300 for "
                        "fashion_mnist, none for a user's data)")
    p.add_argument("--rho-u", type=float, default=1.0, help="imbalance ratio of the unlabeled pool (default 1: balanced)")
    p.add_argument("--unlabeled-size", type=int, default=None, help="pool size cap (default: as many as available)")
    p.add_argument("--unlabeled-order", type=parse_order, default="same", help="same | reversed | comma-separated ids")
    p.add_argument("--pool-relevance", type=float, default=1.0,
                   help="in-domain fraction of the unlabeled pool; the rest becomes MNIST digits (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", default="auto", help="folder / TFRecord sources: auto | H,W | S, the one size "
                   "every image is fitted to (auto: their own when they share one, else the median side, capped)")
    p.add_argument("--channels", default="auto", help="auto (3 when any image is colour) | 1 | 3")
    p.add_argument("--image-fit", default="resize", choices=("resize", "crop", "pad"),
                   help="how an image of another size is fitted: resize, crop to the aspect ratio, pad")
    p.add_argument("--shard-size", type=int, default=10000, help="records per TFRecord shard")
    p.add_argument("--force", action="store_true", help="rebuild even if the output exists")


def spec_from_args(a: argparse.Namespace) -> SplitSpec:
    benchmark = a.source in BENCHMARK_SOURCES
    rho = (100.0 if benchmark else None) if a.rho == "auto" else a.rho
    val = (300 if benchmark else None) if a.val_per_class == "auto" else (None if a.val_per_class == "none" else a.val_per_class)
    return SplitSpec(rho=rho, n_max=a.n_max, class_order=a.class_order, val_per_class=val,
                     rho_u=a.rho_u, unlabeled_size=a.unlabeled_size, unlabeled_order=a.unlabeled_order, seed=a.seed,
                     pool_relevance=a.pool_relevance)


def run_prepare(a: argparse.Namespace) -> str:
    out = ensure_prepared(a.source, spec_from_args(a), a.source_dir, a.out, a.shard_size, force=a.force,
                          image_settings=(a.image_size, a.channels, a.image_fit))
    splits = Manifest.load(out).splits
    for name in SPLITS:
        entry = splits[name]
        counts = entry.get("per_class_counts") or entry.get("hidden_per_class_counts_from_train")
        print(f"[prepare-data] {name:<10} {entry['num_examples']:>6} examples  per class: {counts}")
    return out
