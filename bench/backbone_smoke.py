"""Issue #42 item 3: every training path with the backbones for larger images, a smoke run each.

    tools/env exec python bench/backbone_smoke.py --backbones resnet8/s2,keras:MobileNetV3Small

A small photo folder (bench/photo_folder.py: colour JPEGs of 26-80 px, fitted to 56x56x3) goes through
``python -m pipeline run --preset smoke`` once a (backbone, training path): supervised with calibration,
pseudo-labels, FixMatch, FixMatch+DASO, rotation SSP then supervised, MoCo SSP then supervised, and supervised on
two local workers (train.distribute=multi_worker). A row records whether the run exited 0, the backbone the
Trainer built, the test balanced accuracy (a smoke schedule: 1 epoch of 4 steps, so near chance; the row says the
path runs, not how well) and the seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import write_result  # noqa: E402
from bench.photo_folder import make_photo_folder  # noqa: E402

PATHS = {
    "supervised + calibration": ["semi.method=supervised", "calibration.method=class_offsets"],
    "pseudo-labels": ["semi.method=pseudo_label"],
    "FixMatch": ["semi.method=fixmatch"],
    "FixMatch + DASO": ["semi.method=daso"],
    "rotation SSP -> supervised": ["semi.method=supervised", "pretrain.method=rotation"],
    "MoCo SSP -> supervised": ["semi.method=supervised", "pretrain.method=moco"],
    "two local workers": ["semi.method=supervised", "train.distribute=multi_worker", "train.local_workers=2"],
}


def run(folder: str, tmp: str, backbone: str, sets: list[str]) -> dict:
    out = tempfile.mkdtemp(dir=tmp)
    args = [sys.executable, "-m", "pipeline", "run", "--preset", "smoke", "--set", f"data.source=folder:{folder}",
            "--set", "data.val_per_class=none", "--set", f"train.backbone={backbone}", "--set", f"runs_root={tmp}/runs",
            "--set", f"serving_root={tmp}/serving", "--set", "beam.direct_running_mode=in_memory", "--out", out]
    for s in sets:
        args += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    row = {"backbone": backbone, "exit": proc.returncode, "seconds": time.time() - t0}
    if proc.returncode == 0:
        m = json.load(open(os.path.join(out, "metrics.json")))
        row.update(built=m["config"]["train"]["backbone"], balanced=m["balanced_accuracy"], blessed=m["blessed"],
                   image_shape=m["data"]["image_fit"] and [m["data"]["image_fit"][k] for k in ("height", "width",
                                                                                               "channels")])
    else:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", default="resnet8/s2,keras:MobileNetV3Small")
    p.add_argument("--paths", default=",".join(PATHS))
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "backbone_smoke.md"))
    a = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="backbone_smoke_")
    folder = os.path.join(tmp, "photos")
    make_photo_folder(folder, seed=1, n_max=60, n_min=20, test_per_class=5, pool_fraction=0.05)
    rows = []
    for backbone in a.backbones.split(","):
        for name in a.paths.split(","):
            row = {"path": name, **run(folder, tmp, backbone, PATHS[name])}
            print(f"[backbone_smoke] {json.dumps(row)}", flush=True)
            rows.append(row)
    table = ["| backbone | training path | exit | Trainer's backbone | image shape | test balanced acc (smoke) | "
             "seconds | error |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['backbone']} | {r['path']} | {r['exit']} | {r.get('built', '-')} | {r.get('image_shape', '-')} "
                     f"| {r['balanced']:.3f} | {r['seconds']:.0f} | {r.get('error', '')} |" if r["exit"] == 0 else
                     f"| {r['backbone']} | {r['path']} | {r['exit']} | - | - | - | {r['seconds']:.0f} | {r['error']} |")
    description = ("A photo folder from bench/photo_folder.py (seed 1, 60 to 20 labeled images a class, 5 test images a "
                   "class, a 5% pool), `python -m pipeline run --preset smoke --set data.source=folder:... --set "
                   "data.val_per_class=none --set train.backbone=B` plus each path's settings: "
                   + "; ".join(f"{k}: `{' '.join(v)}`" for k, v in PATHS.items()) + ". The smoke schedule (1 epoch "
                   "of 4 steps, gate floors at zero): the accuracy column says the path ran end to end, not how well.")
    write_result(a.out, "Every training path with the larger-image backbones, a smoke run each (issue #42)", description,
                 "\n".join(table))
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
