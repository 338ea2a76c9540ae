"""Scaling-law plots: the runs with their fitted laws, one PNG per question.

Figures are built with matplotlib's object API and the Agg canvas, never pyplot, so plotting
changes no global backend or state. Every axis that spans decades is logarithmic; points carry
a colour bar for the variable not on the axes, and fitted curves are labelled with their law.
"""

import pathlib

import numpy as np
from matplotlib import cm, colors, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _figure(ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * ncols, 4.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _finish(fig: Figure, axes, path: pathlib.Path) -> pathlib.Path:
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        if ax.get_xscale() == "log":
            # Within a decade matplotlib labels every minor tick too, and they collide.
            ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plain_log_y(ax):
    """Log y axis labelled 2, 2.5, 3 rather than 2x10^0: losses rarely span a decade."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _joint_loss(fit: dict, N, D):
    return fit["E"] + fit["A"] / N ** fit["alpha"] + fit["B"] / D ** fit["beta"]


def loss_vs_params(table: dict, result: dict, path) -> pathlib.Path:
    """Loss against N, points coloured by D; the joint law at a few D, and L(N) if fitted."""
    fig, (ax,) = _figure()
    norm = colors.LogNorm(table["tokens"].min(), table["tokens"].max())
    cmap = cm.viridis
    points = ax.scatter(table["params"], table["loss"], c=table["tokens"], cmap=cmap, norm=norm, s=18, zorder=3)
    fig.colorbar(points, ax=ax, label="tokens D")
    n_grid = np.geomspace(table["params"].min(), table["params"].max(), 200)
    joint = result.get("joint")
    if joint:
        for d in np.unique(np.quantile(table["tokens"], [0.0, 0.5, 1.0], method="nearest")):
            ax.plot(n_grid, _joint_loss(joint, n_grid, d), color=cmap(norm(d)), lw=1.5,
                    label=f"L(N, D={d:.2g})")
    single = result.get("L(N)")
    if single:
        ax.plot(n_grid, single["E"] + single["A"] / n_grid ** single["alpha"], "k--", lw=1.2,
                label=f"L(N) = {single['E']:.3g} + {single['A']:.3g}/N^{single['alpha']:.3f}")
    ax.set_xscale("log")
    _plain_log_y(ax)
    ax.set(xlabel="parameters N", ylabel="loss", title="loss against model size")
    return _finish(fig, [ax], path)


def loss_vs_compute(table: dict, result: dict, path) -> pathlib.Path:
    """Loss against C, points coloured by N; the joint law's compute-optimal frontier and the
    IsoFLOP minima."""
    fig, (ax,) = _figure()
    norm = colors.LogNorm(table["params"].min(), table["params"].max())
    points = ax.scatter(table["flops"], table["loss"], c=table["params"], cmap=cm.plasma, norm=norm, s=18, zorder=3)
    fig.colorbar(points, ax=ax, label="parameters N")
    joint = result.get("joint")
    if joint and "a" in joint:
        c_grid = np.geomspace(table["flops"].min(), table["flops"].max(), 200)
        n_opt = joint["G"] * (c_grid / 6) ** joint["a"]
        ax.plot(c_grid, _joint_loss(joint, n_opt, c_grid / (6 * n_opt)), "k-", lw=1.5,
                label=f"compute-optimal L(C), joint fit (N_opt ~ C^{joint['a']:.3f})")
    iso = result.get("isoflop")
    if iso:
        ax.plot([b["C"] for b in iso["budgets"]], [b["loss_opt"] for b in iso["budgets"]], "r*",
                ms=12, zorder=4, label="IsoFLOP minima")
    ax.set_xscale("log")
    _plain_log_y(ax)
    ax.set(xlabel="compute C (FLOPs)", ylabel="loss", title="loss against compute")
    return _finish(fig, [ax], path)


def isoflop_curves(table: dict, result: dict, path) -> pathlib.Path:
    """Loss against N for each compute budget, with its parabola in log N and its minimum."""
    fig, (ax,) = _figure()
    iso = result["isoflop"]
    budgets = iso["budgets"]
    norm = colors.LogNorm(min(b["C"] for b in budgets), max(b["C"] for b in budgets) * 1.0001)
    for b in budgets:
        colour = cm.viridis(norm(b["C"]))
        mine = np.array(b["rows"])
        ax.plot(table["params"][mine], table["loss"][mine], "o", color=colour, ms=4)
        x = np.linspace(np.log(table["params"][mine].min()), np.log(table["params"][mine].max()), 100)
        ax.plot(np.exp(x), np.polyval(b["parabola"], x), "-", color=colour, lw=1.2, label=f"C = {b['C']:.2g}")
        ax.plot(b["N_opt"], b["loss_opt"], "*", color=colour, ms=13, markeredgecolor="k", zorder=4)
    ax.plot([], [], "k*", ms=10, label="minimum N_opt(C)")
    ax.set_xscale("log")
    ax.set(xlabel="parameters N", ylabel="loss", title="IsoFLOP curves (parabola in log N)")
    return _finish(fig, [ax], path)


def compute_optimal(result: dict, path) -> pathlib.Path:
    """N_opt(C) and D_opt(C): the IsoFLOP minima with their power law, and the joint law's."""
    fig, (ax_n, ax_d) = _figure(2)
    iso, joint = result.get("isoflop"), result.get("joint")
    c_values = [b["C"] for b in iso["budgets"]] if iso else []
    if joint and "a" in joint and not c_values:
        c_values = [1e18, 1e24]
    c_grid = np.geomspace(min(c_values) / 3, max(c_values) * 3, 100)
    for ax, key, exp_key, coef_key, what in ((ax_n, "N_opt", "a", "kN", "parameters"),
                                             (ax_d, "D_opt", "b", "kD", "tokens")):
        if iso:
            ax.plot(c_values, [b[key] for b in iso["budgets"]], "o", ms=7, label="IsoFLOP minima")
            ax.plot(c_grid, iso[coef_key] * c_grid ** iso[exp_key], "-",
                    label=f"IsoFLOP fit: {key} ~ C^{iso[exp_key]:.3f}")
        if joint and "a" in joint:
            n_opt = joint["G"] * (c_grid / 6) ** joint["a"]
            ax.plot(c_grid, n_opt if key == "N_opt" else c_grid / (6 * n_opt), "--",
                    label=f"joint L(N, D): {key} ~ C^{joint[exp_key]:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(xlabel="compute C (FLOPs)", ylabel=f"compute-optimal {what} {key}",
               title=f"compute-optimal {what}")
    return _finish(fig, [ax_n, ax_d], path)


def plot_all(table: dict, result: dict, out_dir) -> list[pathlib.Path]:
    """Every plot the fits in `result` (fit.fit_table's output) support; returns the paths."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [loss_vs_params(table, result, out_dir / "loss_vs_params.png"),
             loss_vs_compute(table, result, out_dir / "loss_vs_compute.png")]
    if result.get("isoflop"):
        paths.append(isoflop_curves(table, result, out_dir / "isoflop.png"))
    if result.get("isoflop") or (result.get("joint") or {}).get("a"):
        paths.append(compute_optimal(result, out_dir / "compute_optimal.png"))
    return paths
