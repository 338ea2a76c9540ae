"""Does the best Adam learning rate found at width 64 still hold at width 512? Standard vs muP.

The MLP of experiments/configs/mup_mlp_mnist.py (three ReLU layers, base width 64) on MNIST at
widths 64 and 512, each under the standard parametrization and under muP, trained for --steps
steps of batch 64 (warmup + cosine, as the config) at each learning rate of a log2 grid. Every
run of one (parametrization, width) pair shares one compiled program: the learning rates are
vmapped (the optimizer runs at rate 1 and its updates are scaled by the traced rate, which is
Adam at that rate), the steps scanned. All runs see the same batches and start from the same
initial weights. Reported per run: the training loss averaged over the last 100 steps and the
validation loss at the end.

  Command:  PYTHONPATH=. python experiments/scaling/mup_lr_transfer.py --out docs
  Runtime:  about 5 minutes on 2 shared CPU cores (measured: see "wall_time_s" in the JSON).
  Output:   docs/mup_lr_transfer.png (loss against learning rate, a curve per width, one panel
            per parametrization) and docs/mup_lr_transfer.json (every number, the best rates).
"""

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels import config as config_lib
from jaxmodels import models
from jaxmodels.training import mup, optim, tasks
from jaxmodels.training.state import init_state
from jaxmodels.training.step import make_eval_step, make_train_step

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "mup_mlp_mnist.py"
LAST = 100  # training loss: mean over this many final steps


def sweep(config, lrs: np.ndarray, seeds: np.ndarray, batches: dict, val_batches: dict,
          steps: int):
    """(train losses [run, steps], validation loss [run]) for runs (lrs[i], seeds[i]): one
    compile. The seed picks the initial weights; every run reads the same batches."""
    model = models.build(config.model)
    example = jnp.asarray(batches["inputs"][0, :1])
    multipliers = mup.lr_multipliers(config.model, config.optimizer.name, model, example)
    unit = dataclasses.replace(config.optimizer, learning_rate=1.0)
    tx_unit, unit_schedule = optim.make(unit, steps, lr_multipliers=multipliers)
    eval_step = make_eval_step(model)

    def run(lr, seed):
        tx = optax.chain(tx_unit, optax.scale(lr))
        train_step = make_train_step(model, tx, schedule=lambda s: unit_schedule(s) * lr)
        state = init_state(model, tx, example, seed)
        state, metrics = jax.lax.scan(train_step, state, batches)
        sums = jax.lax.map(lambda b: eval_step(state, b), val_batches)
        loss_sum, count = sums["loss"]
        return metrics["loss"], jnp.sum(loss_sum) / jnp.sum(count)

    losses, val = jax.jit(jax.vmap(run))(jnp.asarray(lrs, jnp.float32), jnp.asarray(seeds, jnp.int32))
    return np.asarray(losses), np.asarray(val)


def fitted_optimum(lrs: np.ndarray, loss: np.ndarray) -> float:
    """The minimum of a parabola in (log2 lr, log loss) through the grid's best point and its
    neighbours: between grid points, so a factor-2 grid can still show a shift smaller than 2.
    The grid's best point itself when it lies on the edge."""
    i = int(np.nanargmin(loss))
    if i == 0 or i == len(lrs) - 1 or not np.all(np.isfinite(loss[i - 1:i + 2])):
        return float(lrs[i])
    a, b, _ = np.polyfit(np.log2(lrs[i - 1:i + 2]), np.log(loss[i - 1:i + 2]), 2)
    return float(2.0 ** (-b / (2 * a)))


def plot(result: dict, path: pathlib.Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    lrs = np.asarray(result["learning_rates"])
    for ax, p in zip(axes, ("standard", "mup")):
        for i, (w, run) in enumerate(result["runs"][p].items()):
            loss = np.asarray(run["train_loss"], dtype=float)
            per_seed = np.asarray(run["train_loss_per_seed"], dtype=float)
            ax.fill_between(lrs, np.nanmin(per_seed, axis=1), np.nanmax(per_seed, axis=1),
                            color=f"C{i}", alpha=0.2, lw=0)
            ax.plot(lrs, loss, "o-", color=f"C{i}", label=f"width {w} (mean of {result['seeds']} seeds)")
            best = run["best_lr"]
            ax.plot([best], [loss[list(lrs).index(best)]], "*", ms=16, color=f"C{i}", mec="k")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("Adam learning rate")
        summary = result["summary"][p]
        ax.set_title(f"{'muP (base width 64)' if p == 'mup' else 'standard'}: best rate "
                     f"x{summary['best_lr_shift_fitted']:.2f} from width 64 to 512 (fitted)",
                     fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0].set_ylabel(f"training loss (mean of the last {LAST} steps)")
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--widths", default="64,512")
    parser.add_argument("--lr-log2-min", type=int, default=-13, help="the grid is 2^min .. 2^max")
    parser.add_argument("--lr-log2-max", type=int, default=-5)
    parser.add_argument("--seeds", type=int, default=2, help="initialisations per learning rate")
    parser.add_argument("--out", default="docs")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    widths = [int(w) for w in args.widths.split(",")]
    lrs = 2.0 ** np.arange(args.lr_log2_min, args.lr_log2_max + 1)
    grid_lr, grid_seed = (g.ravel() for g in np.meshgrid(lrs, np.arange(args.seeds), indexing="ij"))
    base = config_lib.load(CONFIG)
    task = tasks.build(base.data)
    stream = task.train_batches(base.train.seed)
    batches = jax.tree.map(lambda *xs: np.stack(xs), *[next(stream) for _ in range(args.steps)])
    val_batches = jax.tree.map(lambda *xs: np.stack(xs), *task.eval_batches("validation"))
    result = {"config": str(CONFIG.relative_to(CONFIG.parents[2])), "steps": args.steps,
              "batch_size": base.data.batch_size, "seeds": args.seeds,
              "learning_rates": lrs.tolist(), "runs": {}, "summary": {}}
    for p in ("standard", "mup"):
        runs = result["runs"][p] = {}
        for w in widths:
            t = time.perf_counter()
            model = dataclasses.replace(base.model, parametrization=p).at_width(w)
            losses, val = sweep(dataclasses.replace(base, model=model), grid_lr, grid_seed,
                                batches, val_batches, args.steps)
            # [lr, seed]; a diverged run (non-finite loss) counts as missing.
            train = losses[:, -LAST:].mean(axis=1).reshape(len(lrs), args.seeds)
            train = np.where(np.isfinite(train), train, np.nan)
            val = np.where(np.isfinite(val), val, np.nan).reshape(len(lrs), args.seeds)
            mean = train.mean(axis=1)
            runs[str(w)] = {
                "train_loss": _nan_to_none(mean), "train_loss_per_seed": _nan_to_none(train),
                "val_loss": _nan_to_none(val.mean(axis=1)),
                "best_lr": float(lrs[np.nanargmin(mean)]), "best_lr_fitted": fitted_optimum(lrs, mean),
                "best_lr_per_seed": [float(lrs[np.nanargmin(train[:, k])]) for k in range(args.seeds)],
                "seconds": time.perf_counter() - t}
            print(f"{p:>8} width {w:>4}: best lr {runs[str(w)]['best_lr']:.2e} (fitted "
                  f"{runs[str(w)]['best_lr_fitted']:.2e}); train loss "
                  + " ".join(f"{v:.4f}" for v in mean) + f" ({time.perf_counter() - t:.0f} s)",
                  file=sys.stderr)
        narrow, wide = runs[str(widths[0])], runs[str(widths[-1])]
        wide_loss = np.asarray(wide["train_loss"], dtype=float)
        result["summary"][p] = {
            "best_lr_shift": wide["best_lr"] / narrow["best_lr"],
            "best_lr_shift_fitted": wide["best_lr_fitted"] / narrow["best_lr_fitted"],
            # What transfer is for: the wide model trained at the narrow model's best rate,
            # against the wide model's own best.
            "wide_loss_at_narrow_best_lr": float(wide_loss[list(lrs).index(narrow["best_lr"])]),
            "wide_best_loss": float(np.nanmin(wide_loss))}
    result["wall_time_s"] = time.perf_counter() - t0
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mup_lr_transfer.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "mup_lr_transfer.png")
    print(json.dumps({"summary": result["summary"], "wall_time_s": result["wall_time_s"]}, indent=1))
    return 0


def _nan_to_none(a) -> list:
    return [_nan_to_none(v) if np.ndim(v) else (None if np.isnan(v) else float(v)) for v in a]

if __name__ == "__main__":
    sys.exit(main())
