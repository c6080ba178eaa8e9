"""What every benchmark writes beside its table: the command that made it, the machine and the date."""

from __future__ import annotations

import datetime
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
