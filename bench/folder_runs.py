"""The default preset on a user's own class folder with only `data.source` set, as a new user runs it, its served
model re-scored from the raw files (issues #27 and #42).

    tools/env exec python bench/folder_runs.py --seeds 0 [--folder photos|digits] [--set KEY=VALUE ...] [--result PATH]

For each folder seed one folder is built:
  photos  bench/own_folder.py --photos: 10 digit classes as colour photos of 26-80 px, mostly JPEG, a few gray JPEGs and
          RGBA PNGs, 60 to 744 labeled images a class, 100 test images a class, a ~3,400-image pool (the default);
  digits  bench/own_folder.py: the 28 x 28 gray MNIST digits as PNGs, 30 to 613 labeled images a class in a shuffled
          class order, 250 test images a class, every leftover digit as the pool.
`python -m pipeline run --set data.source=folder:...` runs in a fresh process with its own runs and serving roots.
Then the pushed SavedModel is loaded in another fresh process and every test file's raw bytes go through
`serving_default`, 64 at a time; the table gives the run's own test balanced accuracy beside that independent
re-score, the worst class, the fit and backbone chosen, the planner's choice, the gate and the minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import run_folder, write_result  # noqa: E402
from bench.own_folder import make_own_folder, make_photo_folder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# --folder: (how it is made, its folder's name, the table's title, its results file)
FOLDERS = {"photos": (make_photo_folder, "digit-photos", "a colour-photo folder", "bench/results/photo_folder.md"),
           "digits": (make_own_folder, "mnist-digits", "a gray digits folder", "bench/results/own_folder.md")}

RESCORE = r"""
import json, os, sys
import numpy as np, tensorflow as tf
model_dir, test_dir = sys.argv[1:]
fn = tf.saved_model.load(model_dir).signatures["serving_default"]
meta = json.load(open(os.path.join(model_dir, "assets.extra", "longtail_serving.json")))
names = meta["class_names"]
paths, labels = [], []
for c, name in enumerate(names):
    for f in sorted(os.listdir(os.path.join(test_dir, name))):
        if f.startswith(".") or f.lower() in ("thumbs.db", "desktop.ini"):
            continue
        paths.append(os.path.join(test_dir, name, f)); labels.append(c)
pred = []
for i in range(0, len(paths), 64):
    raw = [open(p, "rb").read() for p in paths[i:i + 64]]
    pred += fn(images=tf.constant(raw))["class_id"].numpy().tolist()
labels, pred = np.array(labels), np.array(pred)
recall = [float((pred[labels == c] == c).mean()) for c in range(len(names))]
print(json.dumps({"files": len(paths), "balanced_accuracy": float(np.mean(recall)), "recall": recall}))
"""


def run_one(folder: str, work: str, sets: list[str]) -> dict:
    m, minutes, _ = run_folder(folder, work, sets, expect=(0, 5))  # 5: the gate refused it, a row all the same
    env = dict(os.environ, PYTHONPATH=ROOT)
    row = {"balanced_accuracy": m["balanced_accuracy"], "worst_class": m["worst_class"],
           "worst_recall": m["worst_class_recall"], "blessed": m["blessed"], "pushed": m["pushed_model_dir"],
           "fit": "x".join(str(m["data"]["image_fit"][k]) for k in ("height", "width", "channels")),
           "backbone": m["config"]["train"]["backbone"], "trained_with": (m.get("plan") or {}).get("trained_with"),
           "choice": (m.get("plan") or {}).get("choice"),
           "minutes": minutes, "name": m["config"]["name"]}
    if m["pushed_model_dir"]:
        score = subprocess.run([sys.executable, "-c", RESCORE, m["pushed_model_dir"], os.path.join(folder, "test")],
                               cwd=ROOT, capture_output=True, text=True, env=env)
        if score.returncode:
            raise RuntimeError(score.stderr[-3000:])
        s = json.loads(score.stdout.strip().splitlines()[-1])
        row.update(served_balanced_accuracy=s["balanced_accuracy"], served_files=s["files"])
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0", help="folder seeds (class order and draw)")
    p.add_argument("--folder", choices=sorted(FOLDERS), default="photos")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="more settings")
    p.add_argument("--work", default="runs/folder-bench")
    p.add_argument("--result", help="the table (default: by --folder, bench/results/photo_folder.md or own_folder.md)")
    a = p.parse_args()
    make, name, title, result = FOLDERS[a.folder]
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        folder = os.path.abspath(f"{a.work}/data/{name}-s{seed}")
        if not os.path.exists(f"{folder}/unlabeled_truth.json"):
            make(folder, seed)
        tag = "-".join(s.replace("=", "_").replace("/", "_").replace(",", "_") for s in a.sets) or "default"
        row = {"seed": seed, **run_one(folder, os.path.abspath(f"{a.work}/s{seed}-{tag}"), a.sets)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    def f(v, d=4):
        return "-" if v is None else f"{v:.{d}f}"

    table = ["| folder seed | image fit | backbone | planner (trained with) | run's test balanced acc | worst class | "
             "served, re-scored from raw files | files | blessed | minutes |", "|" + "---|" * 10]
    for r in rows:
        table.append(f"| {r['seed']} | {r['fit']} | {r['backbone']} | {r['choice']} ({r['trained_with']}) | "
                     f"{f(r['balanced_accuracy'])} "
                     f"| {r['worst_class']} {f(r['worst_recall'], 2)} | {f(r.get('served_balanced_accuracy'))} | "
                     f"{r.get('served_files', '-')} | {r['blessed']} | {r['minutes']:.1f} |")
    write_result(a.result or result, f"The default preset on {title}, re-scored through serving_default",
                 f"Folder: {make.__module__.replace('.', '/')}.py (see its docstring). Command per run: "
                 "`python -m pipeline run --set data.source=folder:FOLDER` (plus its own runs_root and serving_root"
                 + (", " + ", ".join(a.sets) if a.sets else "") + "), in a fresh process; the re-score loads the "
                 "pushed SavedModel in another fresh process and sends every test file's raw bytes to serving_default.",
                 "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
