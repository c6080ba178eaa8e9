"""metrics.json, report.md and the per-bin plot of a task=regression run; and the console table."""

from __future__ import annotations

import os

from models.density import BIN_GROUPS
from pipeline.report_envelope import run_envelope, write_metrics
from pipeline.report_plots import pyplot, save
from pipeline.report_render import components_md, console, distribute_text, fmt, pushed_text


def build_metrics(cfg_dict: dict, csv_dir: str, results: dict, timings: dict) -> dict:
    """metrics.json of a regression run, inside the run envelope both tasks share (pipeline/report_envelope.py)."""
    ev = results["evaluation"] or {}
    test = ev.get("report") or {}
    stats = results["label_stats"] or {}
    headline = {"task": "regression", "target": stats.get("target"), **{k: test.get(k) for k in ("mae", "mse", "gmean")}}
    for g in BIN_GROUPS:
        for k in ("mae", "mse", "gmean", "count"):
            headline[f"{g}_shot_{k}"] = test.get(f"{g}_shot_{k}")
    gate = {"split": ev.get("eval_split"), "checks": ev.get("checks"), "thresholds": ev.get("thresholds"),
            "candidate": ev.get("candidate"), "baseline": ev.get("baseline"), "baseline_model_uri": ev.get("baseline_model_uri")}
    blocks = {
        "bad_rows": {"policy": stats.get("bad_row_policy"), "dropped": stats.get("dropped_rows"),
                     "by_split_and_reason": stats.get("bad_rows"), "rows": stats.get("rows")},
        "missing_feature_values": {"policy": stats.get("missing_feature_policy"),
                                   "train_counts": stats.get("missing_feature_values")},
        "data": {"csv_dir": csv_dir, "split": "CsvExampleGen hash split train:eval:test = "
                 + cfg_dict["regression"]["split_buckets"].replace(",", ":")},
    }
    return run_envelope(cfg_dict, results, timings, headline, gate, blocks)


def group_rows(metrics: dict) -> list[dict]:
    stats, val, test = metrics["label_stats"], metrics["gate"]["candidate"] or {}, metrics["test"]
    rows = []
    for g in BIN_GROUPS:
        nonempty = sum(1 for n, x in zip(stats["bin_counts"], stats["bin_groups"]) if x == g and n > 0)
        rows.append({"group": g, "bins": nonempty, "train": stats["group_examples"][g],
                     "val_mae": val.get(f"{g}_shot_mae"), "test_count": test.get(f"{g}_shot_count"),
                     "test_mae": test.get(f"{g}_shot_mae"), "test_mse": test.get(f"{g}_shot_mse"),
                     "test_gmean": test.get(f"{g}_shot_gmean")})
    return rows


CONSOLE_COLUMNS = (("bins", "<8", lambda r: r["group"]), ("non-empty", ">10", lambda r: r["bins"]),
                   ("train", ">7", lambda r: r["train"]), ("val MAE", ">9", lambda r: fmt(r["val_mae"])),
                   ("test n", ">8", lambda r: r["test_count"] or 0), ("test MAE", ">10", lambda r: fmt(r["test_mae"])),
                   ("test MSE", ">10", lambda r: fmt(r["test_mse"], 1)), ("test GM", ">9", lambda r: fmt(r["test_gmean"])))


def console_table(metrics: dict) -> str:
    return console(CONSOLE_COLUMNS, group_rows(metrics), [
        f"{metrics['target']}: MAE {fmt(metrics['mae'], 4)}  MSE {fmt(metrics['mse'], 3)}  GM {fmt(metrics['gmean'], 4)}  "
        f"(test split); dropped rows {metrics['bad_rows']['dropped']}"], metrics)


def plot_bins(metrics: dict, path: str) -> None:
    plt = pyplot()
    stats, test = metrics["label_stats"], metrics["test"]
    width = stats["bin_width"]
    counts, mae = stats["bin_counts"], test.get("per_bin_mae") or []
    last = max((b for b, n in enumerate(counts) if n > 0), default=0)
    shown = range(min(last + 1, 80))  # the head and the start of the tail; the rest is sparse
    x = [b * width for b in shown]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.bar(x, [counts[b] for b in shown], width=width * 0.9, color="#9ab", label="training examples")
    ax.set_yscale("log")
    ax.set_xlabel(f"{metrics['target']} (bins of {width:g}; the first {len(shown)} of {stats['num_bins']} shown)")
    ax.set_ylabel("training examples (log)")
    ax2 = ax.twinx()
    ax2.plot(x, [mae[b] if b < len(mae) and mae[b] is not None else float("nan") for b in shown], "o", ms=3,
             color="#c33", label="test MAE")
    ax2.set_ylabel("test MAE per bin")
    ax.set_title(f"Training count vs test MAE per {metrics['target']} bin (overall MAE {fmt(metrics['mae'])})")
    fig.legend(loc="upper right")
    fig.tight_layout()
    save(fig, path)


def write_report(metrics: dict, out_dir: str) -> None:
    write_metrics(metrics, out_dir)
    plot_bins(metrics, os.path.join(out_dir, "per_bin.png"))
    stats, cfg, gate, t = metrics["label_stats"], metrics["config"], metrics["gate"], metrics["timings"]
    r = cfg["regression"]
    bad = metrics["bad_rows"]
    md = [f"# Run {metrics['run_id']} ({cfg['preset']} preset, task=regression, target {metrics['target']})", "",
          f"Data: `{metrics['data']['csv_dir']}`; {metrics['data']['split']}. Rows per split: "
          + ", ".join(f"{k} {v}" for k, v in (bad["rows"] or {}).items()) + ".", "",
          "## Bad rows and missing values", "",
          f"Policy: {bad['policy']}.", "",
          "| split | rows | dropped | reasons |", "|---|---|---|---|"]
    for split, n in (bad["rows"] or {}).items():
        reasons = bad["by_split_and_reason"][split]
        md.append(f"| {split} | {n} | {bad['dropped'][split]} | "
                  + (", ".join(f"{k}: {v['count']}" for k, v in sorted(reasons.items())) or "none") + " |")
    miss = metrics["missing_feature_values"]
    md += ["", f"Missing feature values in the training split ({miss['policy']}): "
           + (", ".join(f"{c} {n}" for c, n in (miss["train_counts"] or {}).items()) or "none") + ".", "",
           "## Label density", "",
           f"{stats['num_examples']} training targets in {stats['num_bins']} bins of {stats['bin_width']:g} "
           f"(the last, from {stats['last_bin_from']:g}, open-ended). Weights: reweight={stats['reweight']}, "
           f"LDS {'on' if stats['lds']['enabled'] else 'off'} ({stats['lds']['kernel']}, ks={stats['lds']['ks']}, "
           f"sigma={stats['lds']['sigma']:g}); FDS {'on' if r['fds'] else 'off'}"
           + (f" ({r['fds_kernel']}, ks={r['fds_ks']}, sigma={r['fds_sigma']:g}, momentum {r['fds_momentum']:g}, "
              f"start_update {r['fds_start_update']}, start_smooth {r['fds_start_smooth']})" if r["fds"] else "") + ".",
           f"Bin groups by training count: many > {stats['group_thresholds']['many_above']}, few < "
           f"{stats['group_thresholds']['few_below']} (bins without training examples count as few).", "",
           f"Training: MLP {r['hidden_units']}, {r['objective']} loss, Adam {r['adam_learning_rate']:g}, "
           f"{cfg['train']['epochs']} epochs, batch {cfg['train']['batch_size']}, seed {metrics['seed']}.", "",
           "## Gate (eval split)", "",
           f"Decision: **{'BLESSED' if metrics['blessed'] else 'NOT BLESSED'}**; pushed: {pushed_text(metrics, '`')}.", "",
           "| check | value | threshold | passed | detail |", "|---|---|---|---|---|"]
    for c in gate["checks"] or []:
        md.append(f"| {c['check']} | {fmt(c['value'], 4)} | {fmt(c['threshold'], 4)} | {'yes' if c['passed'] else 'NO'} "
                  f"| {c['detail']} |")
    md += ["", "## Per bin group (test split)", "",
           f"Overall: MAE {fmt(metrics['mae'], 4)}, MSE {fmt(metrics['mse'], 3)}, geometric-mean error "
           f"{fmt(metrics['gmean'], 4)} over {metrics['test'].get('num_examples')} rows.", "",
           "| group | non-empty bins | train rows | val MAE | test rows | test MAE | test MSE | test GM |",
           "|---|---|---|---|---|---|---|---|"]
    for row in group_rows(metrics):
        md.append(f"| {row['group']} | {row['bins']} | {row['train']} | {fmt(row['val_mae'])} | {row['test_count']} | "
                  f"{fmt(row['test_mae'])} | {fmt(row['test_mse'], 2)} | {fmt(row['test_gmean'])} |")
    md += ["", "![training count vs test MAE per bin](per_bin.png)", "", "## Time", "",
           f"Pipeline wall time {t['pipeline_seconds']:.1f} s: training {fmt(t.get('train_seconds'), 1)} s, "
           f"everything else {fmt(t.get('other_seconds'), 1)} s; trainer: {distribute_text(metrics.get('training'))}.",
           "", *components_md(t)]
    history = (metrics.get("training") or {}).get("history") or []
    if history:
        md += ["| epoch | loss | train MAE | seconds |", "|---|---|---|---|"]
        md += [f"| {h['epoch']} | {fmt(h.get('loss'), 4)} | {fmt(h.get('mae'), 4)} | {h['seconds']:.1f} |" for h in history]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")
