"""`make bench-ssp`: self-supervised pre-training (issue #6) on Fashion-MNIST-LT, one table.

CE, rotation+CE, MoCo+CE, logit-adjusted, and the better SSP (chosen on the balanced validation split,
never the test split) + logit-adjusted; the same supervised schedule and seed for all. Pre-training
and supervised training use the project's own code (models.ssp.pretrain, models.training.train with
the strict warm start) without the TFX pipeline around it; every model is scored on the balanced
test split. The linear probe is the pre-training's own check (logistic regression on frozen features
of half the validation split, scored on the other half).

Usage (inside the environment):
  tools/env exec python bench/ssp_bench.py --rho 100 [--epochs 12] [--rotation-epochs 8] [--moco-epochs 20]
Writes bench/results/ssp_rho<rho>.md (table, command, machine, date, settings) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import evaluate  # noqa: E402
from components.data.prepare import load_manifest  # noqa: E402
from models import backbones, ssp  # noqa: E402
from models.config import SSP_DATA, MocoConfig, SSPConfig, TrainConfig  # noqa: E402
from models.label_stats import derive_label_stats  # noqa: E402
from models.training import train  # noqa: E402
from pipeline.configs import load_config  # noqa: E402
from pipeline.tasks import ensure_data  # noqa: E402


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rho", type=float, default=100.0)
    p.add_argument("--epochs", type=int, default=12, help="supervised epochs (all rows)")
    p.add_argument("--rotation-epochs", type=int, default=8)
    p.add_argument("--moco-epochs", type=int, default=20)
    p.add_argument("--moco-momentum", type=float, default=0.99, help="key-encoder EMA (0.999 is for 200-epoch runs)")
    p.add_argument("--ssp-data", default="labeled", choices=list(SSP_DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps-per-epoch", type=int, default=None, help="smoke-testing the script only")
    p.add_argument("--out", default=None, help="results file (default bench/results/ssp_rho<rho>.md)")
    p.add_argument("--keep", default=None, help="keep the pre-trained backbones (pretrain-<method>/) in this folder")
    a = p.parse_args()
    t_start = time.time()
    cfg = load_config("default", {"data.rho": str(a.rho)})
    data = ensure_data(cfg)
    manifest = load_manifest(data)
    stats = derive_label_stats(manifest["splits"]["labeled"]["per_class_counts"], manifest["class_names"])

    def files(split):
        return [os.path.join(data, f) for f in manifest["splits"][split]["files"]]

    shape = manifest["image_shape"]
    groups = [files("labeled")] + ([files("unlabeled")] if a.ssp_data == "labeled+unlabeled" else [])
    base = TrainConfig(backbone="resnet8", augment="crop,flip", epochs=a.epochs, seed=a.seed,
                       max_steps_per_epoch=a.max_steps_per_epoch)
    work = tempfile.mkdtemp(prefix="ssp-bench-", dir="runs" if os.path.isdir("runs") else None)

    pretrained = {}
    for method, epochs in (("rotation", a.rotation_epochs), ("moco", a.moco_epochs)):
        scfg = SSPConfig(method=method, data=a.ssp_data, epochs=epochs, seed=a.seed,
                         max_steps_per_epoch=a.max_steps_per_epoch, moco=MocoConfig(momentum=a.moco_momentum))
        print(f"[bench] pre-training {method}, {epochs} epochs", file=sys.stderr, flush=True)
        run_dir = os.path.join(work, f"pretrain-{method}")
        os.makedirs(run_dir)
        backbone, summary = ssp.pretrain(scfg, base.backbone, shape, groups, run_dir, eval_files=files("validation"))
        backbones.save_backbone_weights(backbone, run_dir)
        pretrained[method] = (run_dir, summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}), file=sys.stderr, flush=True)

    rows, val_bal = [], {}

    def run(name, loss, ssp_method=None):
        cfg = dataclasses.replace(base, loss=loss)
        print(f"[bench] {name}", file=sys.stderr, flush=True)
        run_dir = os.path.join(work, name.replace("+", "_"))
        t0 = time.time()
        model, _ = train(cfg, files("labeled"), stats, shape, run_dir,
                         backbone_weights=pretrained[ssp_method][0] if ssp_method else None)
        seconds = time.time() - t0
        m = evaluate(model, files("test"), shape, stats)
        val_bal[name] = evaluate(model, files("validation"), shape, stats)["balanced_accuracy"]
        s = pretrained[ssp_method][1] if ssp_method else {}
        rows.append({"method": name, "bal": m["balanced_accuracy"], "many": m["many_shot_accuracy"],
                     "medium": m["medium_shot_accuracy"], "few": m["few_shot_accuracy"],
                     "worst": stats["class_names"][m["worst_class"]], "worst_recall": m["worst_class_recall"],
                     "val_bal": val_bal[name], "probe": s.get("linear_probe_accuracy"),
                     "pretrain_s": s.get("pretrain_seconds"), "pretrain_ips": s.get("images_per_second"),
                     "train_s": seconds, "train_ips": stats["num_examples"] * a.epochs / seconds})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    run("ce", "ce")
    run("rotation+ce", "ce", "rotation")
    run("moco+ce", "ce", "moco")
    run("logit_adjusted", "logit_adjusted")
    best = max(("rotation", "moco"), key=lambda k: val_bal[f"{k}+ce"])
    run(f"{best}+logit_adjusted", "logit_adjusted", best)

    lines = ["| method | balanced acc | many | medium | few | worst class (recall) | linear probe | pre-train s "
             "| pre-train img/s | train s | train img/s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['bal']:.4f} | {fmt(r['many'])} | {fmt(r['medium'])} | {fmt(r['few'])} "
                     f"| {r['worst']} ({r['worst_recall']:.3f}) | {fmt(r['probe'])} | {fmt(r['pretrain_s'], 0)} "
                     f"| {fmt(r['pretrain_ips'], 0)} | {r['train_s']:.0f} | {r['train_ips']:.0f} |")
    table = "\n".join(lines)
    print(table)
    total = time.time() - t_start
    pre = {m: {k: s[k] for k in ("epochs", "steps_per_epoch", "num_examples", "final_loss", "final_pretext_accuracy",
                                 "linear_probe_accuracy", "random_init_probe_accuracy", "resolved", "queue_size")}
           for m, (_, s) in pretrained.items()}
    curves = {m: [round(h["loss"], 4) for h in s["history"]] for m, (_, s) in pretrained.items()}
    os.makedirs("bench/results", exist_ok=True)
    path = a.out or f"bench/results/ssp_rho{a.rho:g}.md"
    with open(path, "w") as f:
        f.write(f"# Self-supervised pre-training, Fashion-MNIST-LT rho={a.rho:g}\n\n"
                f"Command: `tools/env exec python bench/ssp_bench.py {' '.join(sys.argv[1:])}`\n\n"
                f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}; date {datetime.date.today()}; "
                f"whole run {total / 60:.1f} min.\n\n"
                f"Supervised: resnet8, {a.epochs} epochs, batch 128, SGD momentum 0.9, cosine from 0.05, weight decay "
                f"5e-4, crop+flip, seed {a.seed}, on the {stats['num_examples']} labeled images; SSP rows start from the "
                f"pre-trained backbone (all 45 backbone variables loaded, fresh head). Pre-training on the {a.ssp_data} "
                f"images (labels not read): rotation {a.rotation_epochs} epochs (all 4 angles of every image, lr 0.1, "
                f"weight decay 2e-4, 5/200 of the steps warm-up, cosine), MoCo v2 {a.moco_epochs} epochs (lr 0.015, "
                f"weight decay 1e-4, cosine, T 0.2, 128-d, key EMA m={a.moco_momentum}, queue "
                f"{pre['moco']['queue_size']}), batch 128. Best SSP for the last row chosen on validation balanced "
                f"accuracy ({json.dumps({k: round(v, 4) for k, v in val_bal.items()})}). Balanced test split (1000 a "
                f"class). Shot groups: {stats['shot_groups']}. Linear probe: logistic regression on frozen features, "
                f"half of the balanced validation split to fit, half to score; random initial weights: rotation run "
                f"{fmt(pre['rotation']['random_init_probe_accuracy'])}, MoCo run "
                f"{fmt(pre['moco']['random_init_probe_accuracy'])}. Images/s: source images per second (rotation shows "
                f"each four times).\n\n{table}\n\n"
                f"Pre-training details: `{json.dumps(pre)}`\n\nPre-training loss per epoch: `{json.dumps(curves)}`\n")
    if a.keep:
        for method, (run_dir, _) in pretrained.items():
            shutil.copytree(run_dir, os.path.join(a.keep, f"pretrain-{method}"), dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
