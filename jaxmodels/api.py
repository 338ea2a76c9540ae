"""`fit` and `predict`: the Keras-style entry points, on the same loop as `jaxmodels train`.

    summary = jaxmodels.fit(model, (x_train, y_train), loss="cross_entropy", optimizer="adam",
                            learning_rate=1e-3, batch_size=32, epochs=10,
                            validation_data=(x_val, y_val), workdir="runs/x", seed=0)
    logits = jaxmodels.predict("runs/x", x_test)

`fit` builds a `Config` from its keywords and hands the model, the arrays and the loss to
`loop.train` as `Parts`: nothing here trains by itself, so checkpoints, exact resume, sharding
presets, metrics.jsonl, curves.png and the results table behave exactly as on the command line.

Re-running `fit` (or `jaxmodels train`) into a workdir:
- the same call resumes an unfinished run, and returns a finished run's summary without
  training (it says so);
- into a finished run, a call that changes what training would use (another learning rate,
  optimizer, model or data) is refused with one line: pass `restart=True` to train from scratch
  into it, or another workdir. Silently training zero steps and reporting the old numbers as the
  new settings' would be the worst answer. More steps (or epochs) continue the run;
- an unfinished run continues with the changes the loop accepts (steps, learning-rate values,
  cadence), which the log names; changes that break the run (model, data, batch size, seed,
  optimizer kind) are refused with one line.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

import numpy as np

from jaxmodels import config as config_lib
from jaxmodels.errors import ConfigError, UserError

# Models handed to `fit` in this process, by workdir, so `predict(workdir, ...)` right after a
# notebook's fit needs no model argument. Only a convenience: a new process passes model=.
_FITTED: dict[str, Any] = {}

PRESETS = ("data", "fsdp", "tensor", "fsdp_tensor")


def given_in_python(*args, **kwargs):
    raise ConfigError("this run's data or loss was given in Python (jaxmodels.fit): pass it again "
                      "to fit, or register it (jaxmodels.register_dataset / register_objective) to "
                      "name it in a config")


def _objective_config(loss, label_smoothing: float, z_loss: float):
    from jaxmodels.training import objectives

    if isinstance(loss, str):
        from jaxmodels import registry

        if loss not in registry.OBJECTIVES or loss == "given":
            known = ", ".join(sorted(set(registry.OBJECTIVES) - {"given"}))
            raise ConfigError(f"loss={loss!r} is not a registered objective ({known}): or pass a "
                              f"function loss(outputs, targets) -> per-example losses")
        return config_lib.ObjectiveConfig(name=loss, label_smoothing=label_smoothing, z_loss=z_loss), None
    if isinstance(loss, objectives.Objective) or callable(loss):
        return config_lib.ObjectiveConfig(name="given"), loss
    raise ConfigError(f"loss={loss!r}: pass 'cross_entropy', 'mse', a function loss(outputs, "
                      f"targets) -> per-example losses, or a jaxmodels Objective")


def _optimizer_config(optimizer, learning_rate: float, schedule: str, warmup_steps: int,
                      weight_decay: float):
    if isinstance(optimizer, str):
        names = typing_choices(config_lib.OptimizerConfig, "name")
        if optimizer not in names:
            raise ConfigError(f"optimizer={optimizer!r} is not one of {', '.join(names)}: or pass an "
                              f"optax.GradientTransformation")
        return config_lib.OptimizerConfig(name=optimizer, learning_rate=learning_rate,
                                          schedule=schedule, warmup_steps=warmup_steps,
                                          weight_decay=weight_decay), None
    if hasattr(optimizer, "init") and hasattr(optimizer, "update"):
        return config_lib.OptimizerConfig(learning_rate=learning_rate), optimizer
    raise ConfigError(f"optimizer={optimizer!r}: pass a name ('adam', 'sgd', ...) or an "
                      f"optax.GradientTransformation")


def typing_choices(cls, field: str) -> tuple:
    import typing

    return typing.get_args(typing.get_type_hints(cls)[field])


def _arrays(data, what: str):
    """(inputs, targets) from `(x, y)` or {"inputs": x, "targets": y}."""
    if isinstance(data, dict):
        missing = {"inputs", "targets"} - set(data)
        if missing:
            raise ConfigError(f"{what} as a dict needs the keys 'inputs' and 'targets' (missing "
                              f"{', '.join(sorted(missing))})")
        return data["inputs"], data["targets"]
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data
    raise ConfigError(f"{what} must be (inputs, targets), a dict with 'inputs' and 'targets', or a "
                      f"jaxmodels data source; got {type(data).__name__}")


def _source(data, validation_data, batch_size: int, eval_batch_size: int):
    from jaxmodels import data as data_lib

    if hasattr(data, "train_batches") and hasattr(data, "eval_batches"):
        if validation_data is not None:
            raise ConfigError("validation_data is for arrays: a data source brings its own "
                              "validation split")
        return data, False
    train = _arrays(data, "data")
    validation = _arrays(validation_data, "validation_data") if validation_data is not None else train
    source = data_lib.from_arrays(train, validation, batch_size=batch_size,
                                  eval_batch_size=eval_batch_size)
    return source, validation_data is None


def fit(model, data, *, loss="cross_entropy", optimizer="adam", learning_rate: float = 1e-3,
        batch_size: int = 32, epochs: float | None = None, steps: int | None = None,
        validation_data=None, workdir: str | os.PathLike | None = None, seed: int = 0,
        parallel: str = "data", devices: int | None = None, restart: bool = False, hooks=(), schedule: str = "constant",
        warmup_steps: int = 0, weight_decay: float = 0.0, label_smoothing: float = 0.0,
        z_loss: float = 0.0, eval_batch_size: int = 500, log_every: int = 100,
        eval_every: int | None = None, checkpoint_every: int | None = 1000,
        microbatches: int = 1, nonfinite: str = "stop", progress: bool = True,
        name: str | None = None) -> dict:
    """Trains `model` on `data` and returns the summary dict (also WORKDIR/summary.json).

    model: a `flax.linen.Module`, a `flax.nnx.Module`, an `(init, apply)` pair or a
      `jaxmodels.Model` (see jaxmodels/models/interface.py).
    data: `(x, y)` arrays with a leading example axis (any dtype: images [N, H, W, C] with
      integer labels [N], float features [N, F] with float targets [N] or [N, D], ...), a dict
      {"inputs", "targets"}, or a data source (jaxmodels/data/source.py).
    loss: "cross_entropy" (integer class targets; logs accuracy too), "mse", a function
      `loss(outputs, targets) -> per-example losses [N]`, or a `jaxmodels.Objective`.
    optimizer: a name ("adam", "adamw", "sgd", "lion", "adafactor") with `learning_rate`
      (and `schedule`, `warmup_steps`, `weight_decay`), or an `optax.GradientTransformation`,
      which then carries its own learning rate.
    epochs or steps: the training length (default 1 epoch).
    validation_data: held-out `(x, y)`; eval_* and val_* are measured on it. Without it they are
      measured on the training data, and the summary says so.
    workdir: where everything is written (default runs/fit_<model name>); a second call resumes.
    parallel: a preset ("data", "fsdp", "tensor", "fsdp_tensor") over every visible device, or
      over the first `devices` of them.
    hooks: training hooks (jaxmodels/training/hooks.py): early stopping, loggers, ...

    The summary holds at least step, train_loss, eval_loss and, under cross-entropy,
    eval_accuracy.
    """
    from jaxmodels import runtime
    from jaxmodels.models import interface
    from jaxmodels.training import loop

    runtime.configure()  # the compile cache and CPU flags, as the CLI has them (runtime.py)
    if parallel not in PRESETS:
        raise ConfigError(f"parallel={parallel!r} is not one of {', '.join(PRESETS)}")
    if epochs is None and steps is None:
        epochs = 1.0
    net = interface.as_model(model)
    source, on_train = _source(data, validation_data, batch_size, eval_batch_size)
    objective_cfg, given_loss = _objective_config(loss, label_smoothing, z_loss)
    optimizer_cfg, given_tx = _optimizer_config(optimizer, learning_rate, schedule, warmup_steps,
                                                weight_decay)
    example = np.asarray(source.example_inputs)
    name = name or f"fit_{net.name}"
    try:
        model_cfg = interface.GivenModelConfig(name=net.name,
                                               fingerprint=interface.fingerprint(net, example))
    except Exception as e:  # noqa: BLE001 - a user's module failing to initialise is one line
        raise UserError(f"{name}: initialising {net.name} on inputs of shape {example.shape} "
                        f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    config = config_lib.Config(
        name=name,
        model=model_cfg,
        data=config_lib.DataConfig(dataset="given", batch_size=batch_size,
                                   eval_batch_size=eval_batch_size, eval_split="validation"),
        objective=objective_cfg,
        optimizer=optimizer_cfg,
        train=config_lib.TrainConfig(seed=seed, steps=steps, epochs=None if steps else epochs,
                                     log_every=log_every, eval_every=eval_every,
                                     microbatches=microbatches, nonfinite=nonfinite,
                                     progress=progress),
        parallel=config_lib.ParallelConfig(preset=parallel, devices=devices),
        checkpoint=config_lib.CheckpointConfig(every_steps=checkpoint_every),
    )
    workdir = pathlib.Path(workdir if workdir is not None else pathlib.Path("runs") / name)
    if str(workdir) == "":
        raise ConfigError("workdir='' is empty: pass a folder, e.g. workdir='runs/x'")
    parts = loop.Parts(model=net, data=source, objective=given_loss, optimizer=given_tx)
    _FITTED[str(workdir.absolute())] = net
    finished_at = None if restart else _finished_step(workdir)
    summary = loop.train(config, workdir, restart=restart, parts=parts, **_hooks(hooks))
    # Said after the loop accepted the call: a changed call into a finished run is refused
    # there instead, and more steps continue it.
    if finished_at is not None and summary.get("step") == finished_at:
        print(f"{name}: {str(workdir)!r} already holds this finished run; nothing was trained "
              f"(restart=True trains it again)", file=sys.stderr)
    if on_train:
        summary = {**summary, "eval_note": "no validation_data: eval_* and val_* are measured on "
                                           "the training data"}
    return summary


def _finished_step(workdir: pathlib.Path) -> int | None:
    """The step of the finished run whose summary.json is in `workdir`, if any."""
    try:
        return int(json.loads((workdir / "summary.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _hooks(hooks) -> dict:
    """`hooks=` for loop.train when it takes them (an empty tuple needs no support)."""
    hooks = tuple(hooks or ())
    return {"hooks": hooks} if hooks else {}


# ---------------------------------------------------------------------------------------------
# predict


def _restore(workdir: pathlib.Path, model, example):
    """(Model, TrainState-like params/model_state) from the weights a run saved in `workdir`."""
    import jax

    from jaxmodels import models
    from jaxmodels.models import interface
    from jaxmodels.training import checkpoint
    from jaxmodels.training.state import init_state

    if model is None:
        model = _FITTED.get(str(workdir.absolute()))
    if model is None:
        path = workdir / "config.json"
        try:
            config = config_lib.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"no config.json in {str(workdir)!r}: is it the workdir of a run?") from None
        except (ValueError, TypeError) as e:
            raise UserError(f"{path} is not a readable config ({type(e).__name__}): rerun the "
                            f"training, or pass model=") from None
        model = models.build(config.model)
    net = interface.as_model(model)
    import optax

    fresh = jax.eval_shape(lambda: init_state(net, optax.identity(), example, 0))
    target = {"params": fresh.params, "model_state": fresh.model_state}
    saved = checkpoint.restore_weights(workdir, target)
    return net, saved


def predict(source, inputs, *, model=None, batch_size: int = 256):
    """The model's outputs (logits for the built-in classifiers and language models) for
    `inputs` [N, ...], as a NumPy array [N, ...].

    source: a workdir of a finished run (its weights/ are read; the model comes from its
      config.json, or the `model` passed to `fit` in this process, or `model=`), or a
      `TrainState` (then `model=` is required).
    Inputs are run in batches of `batch_size`, the last one padded, so any count works with one
    compiled function.
    """
    import jax
    import jax.numpy as jnp

    from jaxmodels.models import interface
    from jaxmodels.training.state import TrainState

    inputs = np.asarray(inputs)
    if inputs.ndim == 0 or len(inputs) == 0:
        raise ConfigError(f"predict needs inputs with a leading example axis, got shape {inputs.shape}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    example = jnp.asarray(inputs[:1])
    if isinstance(source, TrainState):
        if model is None:
            raise ConfigError("predict(state, ...) needs model= (the model the state belongs to)")
        net, variables = interface.as_model(model), {"params": source.params,
                                                     "model_state": source.model_state}
    elif isinstance(source, (str, os.PathLike)):
        workdir = pathlib.Path(source)
        if not (workdir / "weights").is_dir():
            raise UserError(f"no weights/ in {str(workdir)!r}: predict reads a finished run's "
                            f"workdir (train it first)")
        net, variables = _restore(workdir, model, example)
    else:
        raise ConfigError(f"predict's first argument must be a workdir or a TrainState, got "
                          f"{type(source).__name__}")

    @jax.jit
    def run(params, model_state, x):
        return net.apply({"params": params, **model_state}, x, train=False)[0]

    b = min(batch_size, len(inputs))
    outputs = []
    for start in range(0, len(inputs), b):
        chunk = inputs[start:start + b]
        n = len(chunk)
        if n < b:  # one shape for every call: pad, then drop the padded rows
            chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
        out = run(variables["params"], variables["model_state"], chunk)
        outputs.append(jax.tree.map(lambda a: np.asarray(a)[:n], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


__all__ = ["fit", "predict"]
