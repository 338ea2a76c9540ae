"""Learning-curve plots from metrics.jsonl records.

Figures are built with matplotlib's object API and the Agg canvas, never pyplot, so plotting
changes no global backend or state. `plot_curves(workdir)` is the public entry point: the figure
`curves.png` holds, redrawn from the workdir's metrics.jsonl, which a notebook shows inline.
"""

import io
import json
import pathlib

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Keys of a metrics.jsonl record that are not the objective's metrics.
_NOT_METRICS = {"step", "epoch", "loss", "learning_rate", "grad_norm", "param_norm", "update_norm",
                "skipped", "examples_per_sec", "tokens_per_sec", "mfu", "hfu"}


class InlineFigure(Figure):
    """A Figure that Jupyter shows as a PNG when it is a cell's value. Without pyplot, IPython
    registers no display formatter for Figure and would print `<Figure size ...>` instead."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png")
        return buf.getvalue()


def _series(records: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def metric_names(records: list[dict]) -> list[str]:
    """The objective's scalar metrics in the records (train or val_), in first-seen order:
    "accuracy" for cross-entropy, "mae" for MSE, none for a bare loss."""
    names = {}
    for r in records:
        for k, x in r.items():
            name = k[4:] if k.startswith("val_") else k
            if name not in _NOT_METRICS and isinstance(x, (int, float)):
                names[name] = None
    return list(names)


def learning_curves(records: list[dict], path: pathlib.Path, title: str = "",
                    loss_label: str = "cross-entropy (nats)") -> pathlib.Path:
    """Loss (labelled `loss_label`, the objective's), one panel per metric of the objective and
    the learning rate against step (train and validation) in one PNG."""
    curves_figure(records, title, loss_label).savefig(path)
    return path


def curves_figure(records: list[dict], title: str = "", loss_label: str = "loss") -> Figure:
    """The figure `learning_curves` saves (panels: loss, each metric, learning rate)."""
    names = metric_names(records)
    fig = InlineFigure(figsize=(4.3 * (2 + len(names)), 3.8), dpi=110)
    FigureCanvasAgg(fig)
    ax_loss, *ax_metrics, ax_lr = fig.subplots(1, 2 + len(names))
    for ax, key, label in ((ax_loss, "loss", loss_label),
                           *((ax, name, name) for ax, name in zip(ax_metrics, names))):
        for k, which, style in ((key, "train", "-"), (f"val_{key}", "validation", "o-")):
            ax.plot(*_series(records, k), style, label=which, markersize=3)
        ax.set(xlabel="step", ylabel=label, title="loss" if key == "loss" else key)
        ax.legend()
    losses = _series(records, "loss")[1] + _series(records, "val_loss")[1]
    if losses and all(x > 0 for x in losses):  # a user's loss may be negative
        ax_loss.set_yscale("log")
    ax_lr.plot(*_series(records, "learning_rate"), "-")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(workdir) -> Figure:
    """The learning curves of the run in `workdir` (finished or still training) as a matplotlib
    Figure: loss, the objective's metrics and the learning rate against step, train and
    validation, the panels of WORKDIR/curves.png. A notebook cell ending in it shows the plot."""
    from jaxmodels.errors import UserError

    workdir = pathlib.Path(workdir)
    path = workdir / "metrics.jsonl"
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    if not records:
        raise UserError(f"no logged steps in {str(path)!r}: is {str(workdir)!r} the workdir of a "
                        f"run that has logged (train.log_every) at least once?")
    title, objective = workdir.name, None
    try:
        summary = json.loads((workdir / "summary.json").read_text())
        title, objective = summary.get("name", title), summary.get("objective")
    except (OSError, ValueError):  # still training, or killed before the end
        pass
    return curves_figure(records, title, f"{objective} loss" if objective else "loss")
