"""What every benchmark writes beside its table (the command that made it, the machine and the date), the prepared data
it reads and its scoring."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys


def machine() -> str:
    return f"{platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}"


def write_result(path: str, title: str, description: str, table: str) -> str:
    """Write ``bench/results/...md`` with the rerun command (this script and its arguments), print the table."""
    print(table)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    script = os.path.relpath(os.path.abspath(sys.argv[0]))
    with open(path, "w") as f:
        f.write(f"# {title}\n\nCommand: `tools/env exec python {script} {' '.join(sys.argv[1:])}`\n\n"
                f"Machine: {machine()}\n\nDate: {datetime.date.today().isoformat()}\n\n{description}\n\n{table}\n")
    print(path)
    return path


def read_rows(path: str) -> list[dict]:
    """Every row of the JSON-lines record at ``path``, in the order they were recorded."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_rows(path: str, rows: list[dict]) -> list[dict]:
    """Append ``rows`` to the JSON-lines record at ``path`` (one row per line; created when missing); return every row
    it now holds, the ones earlier runs recorded first."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return read_rows(path)


def prepared(data_dir: str) -> tuple[dict, dict, dict]:
    """(manifest, label statistics of the labeled split, {split: file paths}) of a prepared data folder: what the
    benchmarks that train outside the pipeline read."""
    from components.data.prepare import load_manifest
    from models.label_stats import derive_label_stats

    manifest = load_manifest(data_dir)
    stats = derive_label_stats(manifest["splits"]["labeled"]["per_class_counts"], manifest["class_names"])
    return manifest, stats, {split: [os.path.join(data_dir, f) for f in s["files"]] for split, s in manifest["splits"].items()}


def evaluate(model, test_files, image_shape, stats, logits_fn=None) -> dict:
    """models.metrics.per_class_metrics of ``model`` on the (balanced) test files; ``logits_fn`` maps the
    model's outputs to the logits scored (e.g. post-hoc logit adjustment)."""
    import keras
    import numpy as np

    from models import inputs
    from models.metrics import per_class_metrics

    logits, labels = [], []
    for x, y in inputs.eval_dataset(test_files, image_shape):
        out = model(x, training=False)
        logits.append(keras.ops.convert_to_numpy(out if logits_fn is None else logits_fn(out)))
        labels.append(y.numpy())
    return per_class_metrics(np.concatenate(labels), np.concatenate(logits).argmax(1), stats["num_classes"],
                             stats["shot_groups"])


def run_folder(folder: str, work: str, sets: list[str], expect=(0,)) -> tuple[dict, float, int]:
    """``python -m pipeline run --set data.source=folder:FOLDER`` in a fresh process, as a user runs it, with its own
    runs_root and serving_root under ``work``, plus ``sets``: (its metrics.json with ``_out``, its output folder; wall
    minutes; exit status). Raises with the tail of stderr when the exit status is not in ``expect``."""
    import subprocess
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [sys.executable, "-m", "pipeline", "run", "--set", f"data.source=folder:{folder}",
            "--set", f"runs_root={work}/runs", "--set", f"serving_root={work}/serving"]
    for s in sets:
        args += ["--set", s]
    t0 = time.time()
    proc = subprocess.run(args, cwd=root, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root))
    minutes = (time.time() - t0) / 60
    if proc.returncode not in expect:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    out = proc.stdout.strip().splitlines()[-1]
    with open(os.path.join(out, "metrics.json")) as f:
        return dict(json.load(f), _out=out), minutes, proc.returncode
