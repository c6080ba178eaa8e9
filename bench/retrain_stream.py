"""Retraining as data arrives (issue #45): a stream of span-N/ folders, each retrain warm-started from the last blessed
model against the same retrain from scratch; the shift report's pool prior against the truth; a span with 30% of its
labels flipped, refused, then a rollback.

    tools/env exec python bench/retrain_stream.py --seeds 0,1,2 [--set KEY=VALUE ...]

For each seed, the stream is cut from the bundled Fashion-MNIST training images (60,000; class folders named as a user
would): spans 1-4, each an own folder (train/<class>/, test/<class>/, unlabeled/) with a long-tailed
labeled set whose class order drifts from span to span, a balanced test folder and a new long-tailed pool whose order
drifts too; span 5 has span 4's class mix, new images, and 30% of its labels (train and test folders) moved to another
class. Every
run is `python -m pipeline run --set data.source=folder:STREAM` in a fresh process, as a user runs it, with only the
spans landed so far in STREAM:

- warm chain (its own runs and serving roots): span 1 from scratch (no blessed model yet), spans 2-4 with the default
  train.warm_start=auto (from the last blessed model), span 5 (flipped) must exit 5 with the served version unchanged,
  then `python -m pipeline rollback` serves span 3's model again;
- scratch chain (other roots): spans 2-4 with train.warm_start=none, run right after the warm run of the same span
  (alternating, so the machine's speed drifts alike for both).

Columns: span, start (warm/scratch), test balanced and worst-class accuracy (the newest span's test folder), the run's
wall minutes and the Trainers' seconds, the shift report's estimated pool prior against the true class shares of the
pool it read (L1), blessed. The table goes to bench/results/retrain_stream.md (rows in .jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import append_rows, run_folder, write_result  # noqa: E402
from components.data.longtail import exponential_profile  # noqa: E402
from components.data.prepare import encode_png  # noqa: E402
from components.data.sources import read_fashion_mnist  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
SPANS, FLIPPED = 4, 5
MODEL = "clothes"  # model_name: serving/clothes/<version>


def _write(folder: str, images, idx) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in idx:
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
            f.write(encode_png(images[i]))


def make_stream(out: str, seed: int, n_max: int, rho: float, test_per_class: int, pool_size: int,
                flip: float = 0.3) -> dict:
    """Write OUT/span-1..5 and OUT/truth.json (each span's labeled and pool counts). Each span draws new images: its
    labeled classes follow an exponential profile (``n_max``, ``rho``) in an order that drifts (two classes three ranks
    apart swap places a span), its pool ``pool_size`` images of another drifting long-tailed order; span 5 has span 4's
    class mix, new images, and ``flip`` of its labels moved to another class."""
    raw = read_fashion_mnist()
    images, labels = raw.train_images, raw.train_labels
    rng = np.random.default_rng(seed)
    free = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(10)}
    order, pool_order = rng.permutation(10).tolist(), rng.permutation(10).tolist()

    def take(c: int, n: int) -> list[int]:
        if len(free[c]) < n:
            raise ValueError(f"class {NAMES[c]}: {n} images wanted, {len(free[c])} left (lower --n-max or --pool-size)")
        got, free[c] = free[c][:n], free[c][n:]
        return got

    truth = {"spans": {}}
    shutil.rmtree(out, ignore_errors=True)
    for span in range(1, FLIPPED + 1):
        if 1 < span <= SPANS:  # the drift: two classes three ranks apart swap in the labeled order, two in the pool's
            for o in (order, pool_order):
                k = int(rng.integers(0, 7))
                o[k], o[k + 3] = o[k + 3], o[k]
        counts = exponential_profile(n_max, 10, rho, order)
        pool_counts = np.asarray(exponential_profile(1000, 10, rho, pool_order), np.float64)
        pool_counts = np.floor(pool_counts / pool_counts.sum() * pool_size).astype(int)
        d = os.path.join(out, f"span-{span}")
        moved = 0
        for c in range(10):
            drawn = {"train": take(c, counts[c]), "test": take(c, test_per_class), "unlabeled": take(c, pool_counts[c])}
            _write(os.path.join(d, "unlabeled"), images, drawn["unlabeled"])
            for split in ("train", "test"):
                if span != FLIPPED:
                    _write(os.path.join(d, split, NAMES[c]), images, drawn[split])
                    continue
                # the flipped span (span 4's class mix, new images): flip of its images filed under another class
                for i in drawn[split]:
                    wrong = rng.random() < flip
                    moved += int(wrong)
                    _write(os.path.join(d, split, NAMES[(c + int(rng.integers(1, 10))) % 10 if wrong else c]), images, [i])
        truth["spans"][span] = {"labeled": [int(n) for n in counts], "pool": [int(n) for n in pool_counts],
                                **({"flipped": moved} if span == FLIPPED else {})}
    with open(os.path.join(out, "truth.json"), "w") as fh:
        json.dump(truth, fh)
    return truth


def run(stream: str, work: str, sets: list[str], expect=(0,)) -> tuple[dict, float, int]:
    """One `python -m pipeline run` on the stream: (metrics.json, wall minutes, exit status)."""
    return run_folder(stream, work, [f"model_name={MODEL}", *sets], expect)


def pool_truth(truth: dict, spans_read: list[int], class_names: list[str]) -> np.ndarray:
    """The true class shares of the pool of the spans read (the shift report estimates the pool the run ingested), in
    the run's class order (its folder names sorted, not Fashion-MNIST's index order)."""
    counts = np.sum([truth["spans"][str(s)]["pool"] for s in spans_read], axis=0).astype(np.float64)
    return (counts / counts.sum())[[NAMES.index(n) for n in class_names]]


def row_of(seed: int, span: int, chain: str, m: dict, minutes: float, status: int, truth: dict) -> dict:
    recalls = [r for r in m["per_class_recall"] if r is not None]
    ws = (m.get("warm_start") or {}).get("trainer") or {}
    base_ws = (m.get("warm_start") or {}).get("base_trainer") or {}
    shift = m.get("shift") or {}
    pool = shift.get("pool") or {}
    spans_read = (m["data"].get("spans") or {}).get("read") or []
    names = m["label_stats"]["class_names"]
    est_l1 = (float(np.abs(np.asarray(pool["shares"]) - pool_truth(truth, spans_read, names)).sum())
              if pool.get("shares") else None)
    t = m["timings"]
    return {"seed": seed, "span": span, "chain": chain, "start": ws.get("start"),
            "epochs": [base_ws.get("epochs"), ws.get("epochs")],
            "balanced_accuracy": m["balanced_accuracy"], "worst_recall": min(recalls), "worst_class": m["worst_class"],
            "minutes": minutes, "train_seconds": t.get("train_seconds"), "pipeline_seconds": t.get("pipeline_seconds"),
            "pool_prior_l1": est_l1, "shifted": shift.get("shifted"), "labeled_l1": (shift.get("newest_labeled") or {}).get("l1"),
            "blessed": m["blessed"], "pushed": m.get("pushed_model_dir"), "exit": status, "out": m.get("_out"),
            "trained_with": (m.get("plan") or {}).get("trained_with")}


def served_version(work: str) -> str | None:
    folder = os.path.join(work, "serving", MODEL)
    versions = sorted(int(v) for v in os.listdir(folder) if v.isdigit()) if os.path.isdir(folder) else []
    return str(versions[-1]) if versions else None


def stream_seed(seed: int, a) -> list[dict]:
    slug = "-".join(x.replace("=", "_") for x in a.sets)  # runs of other settings in folders of their own
    base = os.path.abspath(os.path.join(a.work, f"s{seed}" + (f"-{slug}" if slug else "")))
    staged, stream = os.path.join(base, "staged"), os.path.join(base, "stream")
    truth = make_stream(staged, seed, a.n_max, a.rho, a.test_per_class, a.pool_size)
    truth = json.loads(json.dumps(truth))  # the keys as the file has them
    shutil.rmtree(stream, ignore_errors=True)
    os.makedirs(stream)
    warm, scratch = os.path.join(base, "warm"), os.path.join(base, "scratch")
    for w in (warm, scratch):
        shutil.rmtree(w, ignore_errors=True)
    sets = [f"train.seed={seed}", *a.sets]
    rows, versions = [], {}

    def land(span: int, as_span: int | None = None):
        shutil.copytree(os.path.join(staged, f"span-{span}"), os.path.join(stream, f"span-{as_span or span}"))

    def record(row):
        row["sets"] = list(a.sets)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    for span in range(1, SPANS + 1):
        land(span)
        m, minutes, status = run(stream, warm, sets, expect=(0, 5))  # a refusal (5) is recorded, the stream goes on
        record(row_of(seed, span, "warm" if span > 1 else "first", m, minutes, status, truth))
        versions[span] = served_version(warm)
        if span > 1 and not a.no_scratch:
            m, minutes, status = run(stream, scratch, sets + ["train.warm_start=none"], expect=(0, 5))
            record(row_of(seed, span, "scratch", m, minutes, status, truth))
    # the flipped span lands as span 5: refused (exit 5), nothing pushed, the served version unchanged
    before = served_version(warm)
    land(FLIPPED)
    m, minutes, status = run(stream, warm, sets, expect=(5,))
    row = row_of(seed, FLIPPED, "flipped", m, minutes, status, truth)
    row["served_unchanged"] = served_version(warm) == before
    # then a rollback (its default: the newest version whose model differs from the served one, span 3's when span 4
    # pushed), served again as a new highest version
    pushed = [v for v in (versions[s] for s in range(1, SPANS + 1)) if v]
    target = pushed[-2] if len(pushed) > 1 and pushed[-2] != pushed[-1] else None
    proc = subprocess.run([sys.executable, "-m", "pipeline", "rollback", "--model", MODEL,
                           "--serving-root", os.path.join(warm, "serving"), "--runs-root", os.path.join(warm, "runs")],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    restored = served_version(warm)
    same = bool(target) and proc.returncode == 0 and _same_bytes(os.path.join(warm, "serving", MODEL, target),
                                                                 os.path.join(warm, "serving", MODEL, restored))
    row.update(rollback_exit=proc.returncode, rollback_restored=same, rollback_to=target, served_after=restored,
               rollback_message=(proc.stderr.strip().splitlines() or [""])[-1][:300])
    record(row)
    return rows


def _same_bytes(a: str, b: str) -> bool:
    def files(root):
        return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
                for d, _, fs in os.walk(root) for f in fs}
    return files(a) == files(b)


def _f(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    md = ["| seed | span | run | settings | Trainers' epochs (base, final) | test balanced acc | worst class | minutes "
          "| train s | pool prior L1 | labeled L1 | blessed | exit |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['seed']} | {r['span']} | {r['chain']} ({r['start']}) | {' '.join(r.get('sets') or []) or '-'} | "
                  f"{r['epochs'][0]}, {r['epochs'][1]} | "
                  f"{r['balanced_accuracy']:.4f} | {r['worst_recall']:.3f} | {r['minutes']:.1f} | "
                  f"{_f(r['train_seconds'], 0)} | {_f(r['pool_prior_l1'], 3)} | {_f(r['labeled_l1'], 3)} | "
                  f"{r['blessed']} | {r['exit']} |")
    return "\n".join(md)


def summary(rows: list[dict]) -> str:
    lines = []
    for sets in sorted({tuple(r.get("sets") or []) for r in rows if r["chain"] == "warm"}):
        pairs = [(w, s) for w in rows if w["chain"] == "warm" and tuple(w.get("sets") or []) == sets for s in rows
                 if s["chain"] == "scratch" and (s["seed"], s["span"]) == (w["seed"], w["span"])]
        if not pairs:
            continue
        ratio = [w["minutes"] / s["minutes"] for w, s in pairs]
        train_ratio = [w["train_seconds"] / s["train_seconds"] for w, s in pairs if s["train_seconds"]]
        diff = [w["balanced_accuracy"] - s["balanced_accuracy"] for w, s in pairs]
        lines += [f"Warm ({' '.join(sets) or 'the defaults'}) / from scratch, wall time: mean {np.mean(ratio):.2f}, max "
                  f"{np.max(ratio):.2f} over {len(pairs)} paired retrains (target <= 0.40); the final Trainer's time: mean "
                  f"{np.mean(train_ratio):.2f}. Balanced accuracy, warm minus scratch: mean {np.mean(diff):+.4f}, per "
                  "pair " + ", ".join(f"{d:+.4f}" for d in diff) + " (target: mean within 0.005)."]
    for chain in ("first", "warm", "scratch"):  # not the flipped span's refused model: its validation labels are wrong
        l1 = [r["pool_prior_l1"] for r in rows if r["pool_prior_l1"] is not None and r["chain"] == chain]
        if l1:
            lines.append(f"Estimated pool prior vs truth (L1), {chain} runs: mean {np.mean(l1):.3f}, max {np.max(l1):.3f} "
                         f"over {len(l1)} (target <= 0.05), by seed/span: " + ", ".join(
                             f"s{r['seed']}/{r['span']} {r['pool_prior_l1']:.3f}" for r in rows
                             if r["pool_prior_l1"] is not None and r["chain"] == chain) + ".")
    for r in rows:
        if r["chain"] == "flipped":
            lines.append(f"Seed {r['seed']}, flipped span: exit {r['exit']}, blessed {r['blessed']}, served version "
                         f"unchanged {r['served_unchanged']}; rollback to version {r['rollback_to']} exit "
                         f"{r['rollback_exit']}, the restored version {r['served_after']} holds its bytes: "
                         f"{r['rollback_restored']}.")
    return "\n\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n-max", type=int, default=400, help="labeled images of a span's head class")
    p.add_argument("--rho", type=float, default=10.0, help="a span's labeled (and pool) imbalance ratio")
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--pool-size", type=int, default=1000, help="pool images a span")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="settings of every run of both chains (e.g. train.warm_start_epochs=20)")
    p.add_argument("--no-scratch", action="store_true",
                   help="the warm chain only (its scratch twins are the same runs as without the setting)")
    p.add_argument("--work", default="runs/retrain-stream-bench")
    p.add_argument("--result", default="bench/results/retrain_stream.md")
    a = p.parse_args()
    for seed in [int(s) for s in a.seeds.split(",")]:
        all_rows = append_rows(a.result.replace(".md", ".jsonl"), stream_seed(seed, a))
        write_result(a.result, "Retraining on a stream of spans: warm start against scratch (issue #45)",
                     f"{__doc__.split(chr(10) * 2)[2]}\n\n{summary(all_rows)}", table(all_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
