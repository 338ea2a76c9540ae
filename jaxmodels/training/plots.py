"""Learning-curve plots from metrics.jsonl records.

Figures are built with matplotlib's object API and the Agg canvas, never pyplot, so plotting
changes no global backend or state.
"""

import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _series(records: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def learning_curves(records: list[dict], path: pathlib.Path, title: str = "") -> pathlib.Path:
    """Loss, accuracy and learning rate against step (train and validation) in one PNG."""
    fig = Figure(figsize=(13, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    for key, label, style in (("loss", "train", "-"), ("val_loss", "validation", "o-")):
        ax_loss.plot(*_series(records, key), style, label=label, markersize=3)
    for key, label, style in (("accuracy", "train", "-"), ("val_accuracy", "validation", "o-")):
        ax_acc.plot(*_series(records, key), style, label=label, markersize=3)
    ax_lr.plot(*_series(records, "learning_rate"), "-")
    ax_loss.set(xlabel="step", ylabel="cross-entropy (nats)", title="loss")
    ax_loss.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return path
