"""The figures of a classification run's report.md, drawn from its metrics.json with matplotlib (Agg, no display):
per_class.png (training count vs test recall), confusion.png (the test confusion matrix) and ssp_loss.png
(the self-supervised pre-training's loss and pretext accuracy per epoch).
"""

from __future__ import annotations

from pipeline.report_render import confusion_matrix, fmt, per_class_rows


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display), imported when the first figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> None:
    """The figure as a PNG at 110 dpi, then closed (pyplot keeps every figure open until it is)."""
    fig.savefig(path, dpi=110)
    pyplot().close(fig)


def plot_per_class(metrics: dict, path: str) -> None:
    """Training images (bars, log scale) and test recall (line) per class, ranked by training count."""
    plt = pyplot()
    rows = per_class_rows(metrics)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    names = [r["class"] for r in rows]
    ax.bar(names, [r["train"] for r in rows], color="#9ab", label="training images")
    ax.set_yscale("log")
    ax.set_ylabel("training images (log)")
    ax.tick_params(axis="x", rotation=45)
    ax2 = ax.twinx()
    ax2.plot(names, [r["test_recall"] if r["test_recall"] is not None else float("nan") for r in rows], "o-", color="#c33",
             label="test recall")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("test recall")
    ax.set_title(f"Training count vs test recall per class (balanced acc {fmt(metrics['balanced_accuracy'], 3)})")
    fig.tight_layout()
    fig.legend(loc="upper right", bbox_to_anchor=(1, 1), bbox_transform=fig.transFigure, ncols=2, fontsize="small",
               frameon=False)  # above the axes, so it covers no class name or bar
    fig.subplots_adjust(top=0.82)
    save(fig, path)


def plot_confusion(metrics: dict, path: str) -> bool:
    """The test confusion matrix, rows = true class (ranked by training count, head first), each row normalised to
    the class's test images, so which classes take a tail class's images is one row to read. False when absent."""
    cm = confusion_matrix(metrics)
    if not cm:
        return False
    plt = pyplot()
    import numpy as np

    order = [r["id"] for r in per_class_rows(metrics)]
    names = [metrics["label_stats"]["class_names"][c] for c in order]
    m = np.asarray(cm, dtype=float)[np.ix_(order, order)]
    rates = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(order)):
        for j in range(len(order)):
            if rates[i, j] >= 0.01:
                ax.text(j, i, f"{rates[i, j]:.2f}".lstrip("0"), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(order)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(order)), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (head first)")
    ax.set_title("Test confusion matrix (share of each true class)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save(fig, path)
    return True


def plot_ssp_loss(ssp: dict, path: str) -> None:
    """The pretext loss and accuracy per pre-training epoch (metrics.json's ``ssp.history``)."""
    plt = pyplot()
    history = ssp["history"]
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [h["loss"] for h in history], "o-", color="#36c", label="pretext loss")
    ax.set_xlabel("pre-training epoch")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h.get("accuracy", float("nan")) for h in history], "s--", color="#c63", label="pretext accuracy")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("pretext accuracy")
    ax.set_title(f"Self-supervised pre-training ({ssp['method']}, {ssp['data']})")
    fig.legend(loc="center right")
    fig.tight_layout()
    save(fig, path)
