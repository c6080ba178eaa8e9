"""`make bench-regression`: imbalanced regression on the Chicago taxi fare (issue #9).

Vanilla, SQINV (sqrt-inverse re-weighting), LDS, FDS and LDS+FDS (the LDS ones with sqrt-inverse
values), and the inverse-count variants (INV, LDS-inv, LDS+FDS-inv), each over several seeds.
Every method trains with models.regression.train_regressor (the Trainer's own code, without the
TFX pipeline around it) on the same rows, split and schedule, and is scored on the test split:
MAE and geometric-mean absolute error overall and on the few-shot bins (training count < 20),
mean and standard deviation over the seeds.

Data: the CSV of the tfx package (15,002 trips), read with pandas into the arrays the pipeline's
reader produces (NaN / -1 / "" where a cell is empty), the bad-row policy applied, split 8:1:1 by a
fixed permutation (seed 0, the same for every method and training seed).

Usage (inside the environment):
  tools/env exec python bench/regression_bench.py [--epochs 10] [--seeds 0,1,2,3,4] [--methods vanilla,lds,...]
Writes bench/results/regression_fare.md (table, command, machine, date) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from models.config import RegressionConfig, TrainConfig  # noqa: E402
from models.density import derive_regression_stats  # noqa: E402
from models.regression import predict, regression_metrics, train_regressor  # noqa: E402
from models.tabular import COLUMN_TYPES, model_columns, to_model_inputs, valid_rows  # noqa: E402

METHODS = {  # name -> RegressionConfig overrides
    "vanilla": {"reweight": "none", "lds": False, "fds": False},
    "sqinv": {"reweight": "sqrt_inv", "lds": False, "fds": False},
    "lds": {"reweight": "sqrt_inv", "lds": True, "fds": False},
    "fds": {"reweight": "none", "lds": False, "fds": True},
    "lds_fds": {"reweight": "sqrt_inv", "lds": True, "fds": True},
    "inv": {"reweight": "inverse", "lds": False, "fds": False},
    "lds_inv": {"reweight": "inverse", "lds": True, "fds": False},
    "lds_fds_inv": {"reweight": "inverse", "lds": True, "fds": True},
}


def csv_path() -> str:
    spec = importlib.util.find_spec("tfx")  # the package's folder, without importing all of tfx
    return os.path.join(os.path.dirname(spec.origin), "examples", "chicago_taxi_pipeline", "data", "simple", "data.csv")


def load_rows(path: str, target: str, max_target: float):
    """Columns as the pipeline's reader gives them, and the bad-row count."""
    df = pd.read_csv(path, keep_default_na=True)
    values = {}
    for c, kind in COLUMN_TYPES.items():
        col = df[c]
        if kind == "float":
            values[c] = col.to_numpy(np.float32)
        elif kind == "int":
            values[c] = col.fillna(-1).to_numpy(np.float64).astype(np.int64)
            if c in ("trip_seconds",):  # a numeric feature (or target): NaN where empty, as the reader's float view
                values[c] = np.where(col.isna(), np.nan, col.to_numpy(np.float64)).astype(np.float32)
        else:
            values[c] = col.fillna("").astype(str).str.encode("utf-8").to_numpy(object)
    keep = valid_rows(values[target], ~df[target].isna().to_numpy(), max_target)
    return {c: v[keep] for c, v in values.items()}, int((~keep).sum()), len(df)


def split(n: int, seed: int = 0):
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(0.8 * n), int(0.9 * n)
    return order[:a], order[a:b], order[b:]


def run(method: str, seed: int, epochs: int, data, base: RegressionConfig, batch_size: int) -> dict:
    cfg = dataclasses.replace(base, **METHODS[method])
    values, (tr, _, te) = data
    y = values[cfg.target].astype(np.float64)
    hist = dict(zip(*np.unique(np.floor(y[tr] / cfg.bin_width).astype(int), return_counts=True)))
    stats = derive_regression_stats(hist, cfg.bin_width, None, cfg.reweight, cfg.lds, cfg.lds_kernel, cfg.lds_ks,
                                    cfg.lds_sigma, cfg.many_shot_above, cfg.few_shot_below) if cfg.reweight != "none" else \
        derive_regression_stats(hist, cfg.bin_width, None, "none", False)
    cols = model_columns(cfg)
    x_tr = to_model_inputs({c: values[c][tr] for c in cols}, cfg)
    x_te = to_model_inputs({c: values[c][te] for c in cols}, cfg)
    keras.backend.clear_session()
    t0 = time.time()
    model, _ = train_regressor(cfg, TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed), x_tr, y[tr], stats,
                               verbose_prefix=f"[{method} seed {seed}]")
    seconds = time.time() - t0
    m = regression_metrics(y[te], predict(model, x_te), stats)
    return {"method": method, "seed": seed, "seconds": seconds, **{k: v for k, v in m.items() if not k.startswith("per_bin")},
            "groups": stats["group_examples"], "group_bins": stats["group_bins"]}


def _ms(values, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def table(results: list[dict], methods) -> list[str]:
    lines = ["| method | seeds | MAE all | GM all | MAE many | MAE medium | MAE few | GM few | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in methods:
        rs = [r for r in results if r["method"] == method]
        if not rs:
            continue
        lines.append(f"| {method} | {len(rs)} | {_ms([r['mae'] for r in rs])} | {_ms([r['gmean'] for r in rs])} | "
                     f"{_ms([r['many_shot_mae'] for r in rs])} | {_ms([r['medium_shot_mae'] for r in rs])} | "
                     f"{_ms([r['few_shot_mae'] for r in rs], 2)} | {_ms([r['few_shot_gmean'] for r in rs], 2)} | "
                     f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--target", default="fare")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    base = RegressionConfig(target=args.target)
    values, dropped, total = load_rows(csv_path(), args.target, base.max_target)
    n = len(values[args.target])
    data = (values, split(n))
    methods, seeds = args.methods.split(","), [int(s) for s in args.seeds.split(",")]
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"regression_{args.target}.md")
    log = out.replace(".md", ".jsonl")
    results = []
    for method in methods:
        for seed in seeds:
            r = run(method, seed, args.epochs, data, base, args.batch_size)
            results.append(r)
            with open(log, "a") as f:
                f.write(json.dumps(r) + "\n")
            print(f"{method} seed {seed}: MAE {r['mae']:.3f} few {r['few_shot_mae']:.2f} GM {r['gmean']:.3f} "
                  f"({r['seconds']:.0f} s)", flush=True)
    g, b = results[0]["groups"], results[0]["group_bins"]
    md = [f"# Imbalanced regression: Chicago taxi {args.target}", "",
          f"Command: `tools/env exec python bench/regression_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
          "", f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}; date "
          f"{datetime.date.today().isoformat()}", "",
          f"Data: {total} rows of the tfx package's CSV, {dropped} dropped by the bad-row policy; split 8:1:1 by a fixed "
          f"permutation: {len(data[1][0])} train, {len(data[1][1])} validation (unused), {len(data[1][2])} test. $1 bins "
          f"of the training fares: many (> 100 trips) {g['many']} trips in {b['many']} bins, medium (20-100) "
          f"{g['medium']} in {b['medium']}, few (< 20) {g['few']} trips (bins without trips count as few).", "",
          f"Model: MLP {base.hidden_units} over Keras preprocessing layers, L1 loss, Adam {base.adam_learning_rate:g}, "
          f"batch {args.batch_size}, {args.epochs} epochs, last epoch scored on the test split (no model selection). "
          f"LDS: {base.lds_kernel} ks={base.lds_ks} sigma={base.lds_sigma:g}; FDS: {base.fds_kernel} ks={base.fds_ks} "
          f"sigma={base.fds_sigma:g}, momentum {base.fds_momentum:g}, update from epoch {base.fds_start_update}, "
          f"calibration from epoch {base.fds_start_smooth}. Mean ± standard deviation over seeds {args.seeds}; "
          "GM = geometric mean of the absolute errors.", "", *table(results, methods), ""]
    with open(out, "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
