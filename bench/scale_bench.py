"""Issue #16 item 4: OwnDataExampleGen and LabelStatsGen on a synthetic image folder at 1x, 4x and 16x.

For each scale: a folder of 28x28 grayscale PNGs, 10 classes with long-tailed counts (n_c proportional to
100^(-c/9), rho=100), 50 test images a class; then, each in its own subprocess, the ingestion component
(a LocalDagRunner pipeline of OwnDataExampleGen alone, Beam FnApiRunner multi_processing) with
direct_num_workers 1 and 2, and LabelStatsGen's executor on the ingested examples. Peak RSS is the largest
sum of the resident set sizes of the subprocess and all its descendants (the Beam workers), polled every
0.1 s with psutil; images/s is images ingested (or counted) over the component's wall time, start-up included.

    tools/env exec python bench/scale_bench.py --base 10000          # 10k / 40k / 160k images
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import write_result  # noqa: E402

CLASSES = [f"c{i}" for i in range(10)]


def class_counts(total: int) -> list[int]:
    weights = [100 ** (-c / 9) for c in range(10)]
    return [max(30, int(total * w / sum(weights))) for w in weights]


def make_folder(root: str, total: int, seed: int = 0, photos: bool = False) -> int:
    """A synthetic folder of ``total`` (about) 28x28 grayscale PNGs, or with ``photos`` Fashion-MNIST images as colour
    photos of 26-80 px, mostly JPEG (bench/own_folder.py's photo_file); returns the number of train images."""
    import numpy as np

    from bench.own_folder import photo_file
    from components.data.prepare import encode_png
    from components.data.sources import read_fashion_mnist

    if os.path.exists(os.path.join(root, ".complete")):
        return int(open(os.path.join(root, ".complete")).read())
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    fashion = read_fashion_mnist() if photos else None
    n = 0
    for split, counts in (("train", class_counts(total)), ("test", [50] * 10)):
        for c, (name, k) in enumerate(zip(CLASSES, counts)):
            os.makedirs(os.path.join(root, split, name))
            pool = np.flatnonzero(fashion.train_labels == c) if photos else None
            for i in range(k):
                if photos:
                    data, suffix = photo_file(fashion.train_images[pool[i % len(pool)]], rng)
                else:
                    img = (rng.integers(0, 64, (28, 28, 1)) + 19 * c).astype(np.uint8)  # class-dependent, compressible
                    data, suffix = encode_png(img), ".png"
                with open(os.path.join(root, split, name, f"{i:06d}{suffix}"), "wb") as f:
                    f.write(data)
            n += k if split == "train" else 0
    with open(os.path.join(root, "train", CLASSES[0], ".DS_Store"), "wb") as f:
        f.write(b"\0")
    with open(os.path.join(root, ".complete"), "w") as f:
        f.write(str(n))
    return n


def beam_args(workers: int) -> list[str]:
    return ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def run_ingest(source: str, workers: int, work: str, image_size: str = "auto") -> dict:
    """(child) OwnDataExampleGen alone in a LocalDagRunner pipeline; prints its timing as JSON."""
    from tfx import v1 as tfx

    from components.data.longtail import SplitSpec
    from components.data.own_data import describe, image_fit_of, plan_own_data
    from components.own_data_example_gen import REPORT_FILE, OwnDataExampleGen

    t0 = time.time()
    spec = SplitSpec(rho=None, val_per_class=20)
    plan = plan_own_data(source, spec)
    manifest = describe(plan, spec, image_fit_of(plan, image_size)[1])
    gen = OwnDataExampleGen(source=source, split_spec=spec, class_names=manifest["class_names"],
                            image_fit=manifest["image_fit"], with_pool=False)
    shutil.rmtree(work, ignore_errors=True)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="scale", pipeline_root=work, components=[gen], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(work, "metadata.sqlite")), beam_pipeline_args=beam_args(workers))
    t1 = time.time()
    tfx.orchestration.LocalDagRunner().run(pipeline)
    t2 = time.time()
    (uri,) = glob.glob(os.path.join(work, "OwnDataExampleGen", "examples", "*"))
    report = json.load(open(os.path.join(uri, REPORT_FILE)))
    n = sum(s["num_examples"] for s in report["splits"].values())
    return {"images": n, "seconds": t2 - t1, "plan_seconds": t1 - t0, "uri": uri,
            "non_image_files": report["non_image_files"], "image_shape": manifest["image_shape"],
            "resized": report["image_fit"]["resized"], "converted": report["image_fit"]["converted"]}


def run_label_stats(uri: str, workers: int, work: str, image_shape: str = "[28, 28, 1]") -> dict:
    """(child) LabelStatsGen's executor on the ingested train split."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import artifact_utils, standard_artifacts

    from components.artifacts import LABEL_STATS_FILE, LabelStatistics
    from components.label_stats_gen import Executor

    examples = standard_artifacts.Examples()
    examples.uri = uri
    examples.split_names = artifact_utils.encode_split_names(["train", "eval", "test"])
    out = LabelStatistics()
    out.uri = os.path.join(work, "label_stats")
    shutil.rmtree(out.uri, ignore_errors=True)
    os.makedirs(out.uri)
    props = {"num_classes": 10, "class_names": json.dumps(CLASSES), "image_shape": image_shape,
             "split": "train"}
    t0 = time.time()
    Executor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=beam_args(workers), tmp_dir=work)).Do(
        {"examples": [examples]}, {"label_stats": [out]}, props)
    stats = json.load(open(os.path.join(out.uri, LABEL_STATS_FILE)))
    return {"images": stats["num_examples"], "seconds": time.time() - t0}


def measure(args: list[str]) -> dict:
    """Runs this script as a child with ``args``; its result plus the peak RSS of its process tree (MiB)."""
    import psutil

    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    parent, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.1)
    out = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(f"{args} failed ({proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 2**20
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", type=int, default=10000, help="train images at 1x (default 10000: 10k / 40k / 160k)")
    p.add_argument("--scales", default="1,4,16")
    p.add_argument("--workers", default="1,2")
    p.add_argument("--work", default=os.path.join(ROOT, "runs", "bench_scale"))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "scale.md"))
    p.add_argument("--notes", default="")
    p.add_argument("--photos", action="store_true", help="colour JPEG photos of mixed sizes (issue #42), not 28x28 PNGs")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, arg, workers, work, *extra = a.child
        result = (run_ingest if kind == "ingest" else run_label_stats)(arg, int(workers), work, *extra)
        print(json.dumps(result), flush=True)
        return

    rows = []
    for scale in [int(s) for s in a.scales.split(",")]:
        folder = os.path.join(a.work, f"{'photos' if a.photos else 'folder'}_{a.base * scale}")
        t0 = time.time()
        n_train = make_folder(folder, a.base * scale, photos=a.photos)
        print(f"[scale] {scale}x: {n_train} train images ({time.time() - t0:.0f} s to write)", flush=True)
        for workers in [int(w) for w in a.workers.split(",")]:
            work = os.path.join(a.work, f"tfx_{scale}x_{workers}w")
            ing = measure(["--child", "ingest", f"folder:{folder}", str(workers), work])
            st = measure(["--child", "stats", ing["uri"], str(workers), work, json.dumps(ing["image_shape"])])
            row = {"scale": scale, "images": ing["images"], "workers": workers,
                   "ingest_s": ing["seconds"], "ingest_ips": ing["images"] / ing["seconds"],
                   "ingest_rss": ing["peak_rss_mib"], "stats_images": st["images"], "stats_s": st["seconds"],
                   "stats_ips": st["images"] / st["seconds"], "stats_rss": st["peak_rss_mib"],
                   "non_image_files": ing["non_image_files"], "image_shape": ing["image_shape"],
                   "resized": ing["resized"], "converted": ing["converted"]}
            print(f"[scale] {json.dumps(row)}", flush=True)
            rows.append(row)
            shutil.rmtree(work, ignore_errors=True)
    table = ["| scale | images ingested | Beam workers | ingestion s | ingestion images/s | ingestion peak RSS (MiB) "
             "| label stats images | label stats s | label stats images/s | label stats peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['scale']}x | {r['images']} | {r['workers']} | {r['ingest_s']:.1f} | {r['ingest_ips']:.0f} "
                     f"| {r['ingest_rss']:.0f} | {r['stats_images']} | {r['stats_s']:.1f} | {r['stats_ips']:.0f} "
                     f"| {r['stats_rss']:.0f} |")
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    free = ", ".join(f"{k} {int(meminfo[k].split()[0]) / 2**20:.1f} GiB" for k in ("MemTotal", "MemAvailable"))
    kind = ("colour photos made from Fashion-MNIST training images (bench/own_folder.py's photo_file: 26-80 px a "
            "side, aspect 4:5 to 5:4, JPEG named .jpg/.jpeg/.JPG, about 3% gray JPEGs and 3% RGBA PNGs, 2% "
            f"EXIF-rotated), fitted to {rows[0]['image_shape'] if rows else '?'} (data.image_size=auto; "
            f"{rows[-1]['resized'] if rows else '?'} resized, {rows[-1]['converted'] if rows else '?'} converted in "
            "the largest)") if a.photos else "28x28 grayscale PNGs"
    description = (
        f"Synthetic folder: {kind}, 10 classes, long-tailed train counts (rho=100, at least 30 a class), "
        f"50 test images a class, one `.DS_Store` (counted: {rows[0]['non_image_files'] if rows else '?'} non-image file). "
        f"1x = {a.base} train images. Ingestion: OwnDataExampleGen alone in a LocalDagRunner pipeline (driver "
        "fingerprint, plan from the listing, Beam read/decode/check/PNG-encode/write of train+eval+test), "
        "val_per_class=20, rho=none; label statistics: LabelStatsGen's executor on the ingested train split. "
        "Beam: FnApiRunner, multi_processing, direct_num_workers as in the table. Seconds include each "
        "component's start-up (Beam worker processes, TFX driver). Peak RSS: the largest sum of resident set "
        "sizes over the child process and all its descendants (Beam workers), polled every 0.1 s.\n\n"
        f"`nproc`: {os.cpu_count()}; memory (/proc/meminfo at the end): {free}.\n\n" + (f"Notes: {a.notes}" if a.notes else ""))
    title = ("Colour photos of mixed sizes at scale: ingestion and label statistics (issue #42)"
             if a.photos else "Ingestion and label statistics at scale (issue #16)")
    write_result(a.out, title, description, "\n".join(table))


if __name__ == "__main__":
    main()
