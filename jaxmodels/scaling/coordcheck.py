"""Coordinate check: each layer's activation scale against width over the first training steps.

The test of a parametrization (Yang et al., "Tensor Programs V", 2022, section 5): train the
same model at several widths for a few steps on the same batches and record the RMS of every
layer's output. Under muP the curves are flat in the width at every step; under the standard
parametrization with Adam they tilt upwards after the first update (a unit's change sums
`width` aligned contributions): the printed slope of log RMS against log width is about 1 for
the logits there, about 0 under muP.

    jaxmodels coordcheck experiments/configs/mup_mlp_mnist.py --compare
    jaxmodels coordcheck experiments/configs/mup_gpt_shakespeare.py --widths 64,128,256 --steps 3

Width is what the config's `at_width` scales: the MLP's hidden width, the Transformer's d_model
(MLP width and head dim with it, the number of heads fixed). Steps run at the optimizer's
peak learning rate (the schedule is replaced by a constant: a warmup would hide the very updates
being measured), on one device, with activations measured in evaluation mode on the batch the
next step trains on; step 0 is the initialisation. Dropout and normalisation layers are not
recorded (the first repeats its input in evaluation, the second is O(1) by construction).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import models
from jaxmodels.config import Config
from jaxmodels.errors import ConfigError, UserError
from jaxmodels.models import layer_norm
from jaxmodels.training import mup, optim, tasks
from jaxmodels.training.state import init_state
from jaxmodels.training.step import make_train_step

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024)
_NOT_RECORDED = (nn.Dropout, nn.LayerNorm, nn.RMSNorm, layer_norm.LayerNorm)


@dataclasses.dataclass(frozen=True)
class CoordData:
    """rms[w, t, l]: RMS of layer l's output at widths[w] after t updates (t = 0..steps)."""

    parametrization: str
    widths: tuple[int, ...]
    layers: tuple[str, ...]
    rms: np.ndarray

    def slopes(self, step: int = -1) -> np.ndarray:
        """Per layer, d log RMS / d log width at `step` (least squares): 0 is width-independent,
        1 is linear growth."""
        x = np.log(np.asarray(self.widths, np.float64))
        rms = self.rms[:, step, :]
        # A zero-initialised readout has RMS 0 at step 0: no slope there (nan).
        y = np.log(np.where(rms > 0, rms, 1.0))
        return np.where(np.all(rms > 0, axis=0), np.polyfit(x, y, 1)[0], np.nan)

    def to_dict(self) -> dict:
        return {"parametrization": self.parametrization, "widths": list(self.widths),
                "layers": list(self.layers), "rms": self.rms.tolist(),
                "slope_first_step": self.slopes(0).tolist(), "slope_last_step": self.slopes(-1).tolist()}


def parse_widths(text: str) -> tuple[int, ...]:
    """"64,128,256" -> (64, 128, 256), or a UserError naming the problem."""
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise UserError(f"--widths {text!r}: expected comma-separated integers, e.g. --widths 64,128,256") from None
    if len(set(widths)) < 2 or min(widths) <= 0:
        raise UserError(f"--widths {text!r}: give at least two different positive widths, e.g. --widths 64,128,256")
    return tuple(sorted(set(widths)))


def _check_scalable(config: Config) -> None:
    if not isinstance(config.model, mup.WidthScalable):
        raise UserError(f"coordcheck needs a model with a width to scale (mlp, transformer_lm, "
                        f"transformer_classifier, vit), got model kind {config.model.kind}")


def configs_at(config: Config, widths: Sequence[int]) -> list[Config]:
    """`config` at each width, validated (one line naming the width) before anything compiles."""
    _check_scalable(config)
    mup.check_optimizer(config.model, config.optimizer.name)
    # A constant rate: the coordinate check measures updates at the peak learning rate.
    optimizer = dataclasses.replace(config.optimizer, schedule="constant", warmup_steps=0)
    out = []
    for width in widths:
        try:
            scaled = dataclasses.replace(config, model=config.model.at_width(width), optimizer=optimizer)
        except ConfigError as e:
            raise UserError(f"width {width}: {e}: pick --widths this model accepts") from None
        if scaled.model.width != width:
            raise UserError(f"width {width}: model {config.model.kind} has no hidden width to scale")
        out.append(scaled)
    return out


def _recorded(module: nn.Module, method_name: str) -> bool:
    return method_name == "__call__" and not isinstance(module, _NOT_RECORDED)


def activation_rms(model: nn.Module, variables, inputs: jax.Array) -> dict[str, jax.Array]:
    """{layer path: RMS of its output} for one evaluation-mode forward pass; "output" is the
    model's own output (the logits) unless a layer already returned that very array. A module
    that hands back its input unchanged (rotary "positions", an MLP's head as the model's
    output) is left out the same way."""
    _, state = model.apply(variables, inputs, train=False, capture_intermediates=_recorded,
                           mutable=["intermediates"])
    out, seen = {}, []
    for path, outputs in flax.traverse_util.flatten_dict(state["intermediates"]).items():
        # outputs: a tuple of this module's call results; a block returns (x, kv): take x.
        x = jax.tree.leaves(outputs)[0]
        if any(x is y for y in seen):
            continue
        seen.append(x)
        out["/".join(path[:-1]) or "output"] = jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))
    return out


def _trajectory(cfg: Config, example: jax.Array, steps: int):
    """A jitted function of the stacked batches: init, then `steps` train steps, measuring every
    layer before each and after the last (one compilation per width); and the list that names
    its layers, in forward order, once it has been traced."""
    model = models.build(cfg.model)
    multipliers = mup.lr_multipliers(cfg.model, cfg.optimizer.name, model, example)
    tx, schedule = optim.make(cfg.optimizer, steps, lr_multipliers=multipliers)
    train_step = make_train_step(model, tx, schedule=schedule)

    names: list[str] = []

    def measure(state, inputs):
        rms = activation_rms(model, {"params": state.params, **state.model_state}, inputs)
        # jit returns dicts with sorted keys; the forward order is only visible while tracing.
        names[:] = list(rms)
        return rms

    @jax.jit
    def trajectory(batches):
        state = init_state(model, tx, example, cfg.train.seed)

        def body(state, batch):
            rms = measure(state, batch["inputs"])
            return train_step(state, batch)[0], rms

        first = jax.tree.map(lambda x: x[:steps], batches)
        state, rms = jax.lax.scan(body, state, first)
        last = measure(state, batches["inputs"][steps])
        return jax.tree.map(lambda r, l: jnp.concatenate([r, l[None]]), rms, last)

    return trajectory, names


def coord_data(configs: Sequence[Config], batches: Sequence[dict], steps: int) -> CoordData:
    """Trains each config (one per width, from `configs_at`) for `steps` steps on
    batches[0..steps-1] and measures every layer after 0..steps updates (on batches[t])."""
    if len(batches) < steps + 1:
        raise ValueError(f"need {steps + 1} batches for {steps} steps, got {len(batches)}")
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *batches[:steps + 1])
    example = jnp.asarray(batches[0]["inputs"][:1])
    per_width = []
    for cfg in configs:
        trajectory, names = _trajectory(cfg, example, steps)
        per_width.append(jax.device_get(trajectory(stacked)))
    layers = tuple(names)  # in the order the forward pass reached them
    rms = np.stack([np.stack([r[name] for name in layers], axis=-1) for r in per_width])
    return CoordData(configs[0].model.parametrization, tuple(c.model.width for c in configs),
                     layers, rms)


def format_table(data: CoordData) -> str:
    """Per layer: the slope of log RMS against log width after each step (0: independent of
    width, 1: linear growth), then the RMS at each width after the last step."""
    steps = data.rms.shape[1] - 1
    name_w = max(len("layer"), *map(len, data.layers))
    slopes = np.stack([data.slopes(t) for t in range(steps + 1)], axis=1)  # [layer, step]
    head = (f"{data.parametrization}: slope of log RMS against log width after each step, and "
            f"the RMS at each width after step {steps}\n"
            f"{'layer':<{name_w}}" + "".join(f"{f'step{t}':>7}" for t in range(steps + 1)) + "  |"
            + "".join(f"{w:>9}" for w in data.widths))
    lines = [f"{name:<{name_w}}" + "".join(f"{v:>7.2f}" for v in slopes[l]) + "  |"
             + "".join(f"{data.rms[i, -1, l]:>9.3g}" for i in range(len(data.widths)))
             for l, name in enumerate(data.layers)]
    return "\n".join([head, *lines])


def plot(datas: Sequence[CoordData], path) -> pathlib.Path:
    """One row per parametrization, one panel per step: RMS against width, log-log, one line
    per layer; a shared y axis so the rows compare directly."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = datas[0].rms.shape[1]
    fig = Figure(figsize=(2.6 * cols + 2.2, 2.6 * len(datas) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(datas), cols, squeeze=False, sharex=True, sharey=True)
    for row, data in zip(axes, datas):
        for t, ax in enumerate(row):
            for l, name in enumerate(data.layers):
                ax.plot(data.widths, data.rms[:, t, l], marker="o", ms=3, lw=1.2, label=name,
                        color=f"C{l % 10}", ls="-" if l < 10 else "--")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(alpha=0.3, which="both")
            ax.set_title(f"{data.parametrization}, step {t}", fontsize=9)
            if t == 0:
                ax.set_ylabel("RMS of layer output")
        for ax in row:
            ax.set_xlabel("width")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    path = pathlib.Path(path)
    fig.savefig(path)
    return path


def run(config: Config, *, widths: Sequence[int] = DEFAULT_WIDTHS, steps: int = 5, out_dir,
        compare: bool = False) -> list[CoordData]:
    """The `jaxmodels coordcheck` command as a function: measures `config` (and, with `compare`,
    both parametrizations), prints the tables, writes coordcheck.png and coordcheck.json."""
    if steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1")
    _check_scalable(config)
    parametrizations = ("standard", "mup") if compare else (config.model.parametrization,)
    runs = [configs_at(dataclasses.replace(config, model=dataclasses.replace(config.model, parametrization=p)),
                       widths) for p in parametrizations]
    out_dir = pathlib.Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {str(out_dir)!r} ({e.strerror}): pick a writable folder") from None
    task = tasks.build(config.data)
    train = task.train_batches(config.train.seed)
    batches = [next(train) for _ in range(steps + 1)]
    datas = []
    for configs in runs:
        configs = [dataclasses.replace(c, model=tasks.resolve_model(c.model, task)) for c in configs]
        data = coord_data(configs, batches, steps)
        print(format_table(data))
        datas.append(data)
    record = {"config": config.name, "steps": steps, "widths": list(widths),
              "results": [d.to_dict() for d in datas]}
    (out_dir / "coordcheck.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {plot(datas, out_dir / 'coordcheck.png')} and {out_dir / 'coordcheck.json'}")
    return datas


__all__ = ["CoordData", "DEFAULT_WIDTHS", "activation_rms", "configs_at", "coord_data",
           "format_table", "parse_widths", "plot", "run"]
