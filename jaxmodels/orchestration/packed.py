"""Packed sweeps: K models of one shape trained by one compiled program.

Shape names: K models, B batch.

A sweep over seeds or learning rates usually runs K separate trainings, each paying its own
start-up, data loading and compilation, and each issuing kernels too small to keep the machine
busy. Here the K train states are stacked along a leading axis and the loop's own pure step
(`training.step.make_train_step`) is `jax.vmap`ped over (state, batch): one compilation, one
dispatch per step for all K models, K times the work per kernel.

What may differ between the models is exactly what a `Variant` holds: the seed (parameter
init, dropout and data order, like `train.seed` in a separate run), the peak learning rate and
a factor on the initial weight matrices. Everything else, every shape included, comes from the
one config, so the models cannot differ in shape; a sweep over widths or depths is K programs.

Model k is the separate run `jaxmodels.train(config with train.seed=seed_k and
optimizer.learning_rate=lr_k)`: it reads the same batch stream (`task.train_batches(seed_k)`),
starts from the same initial state and takes the same steps, built by the same
`make_train_step` with the config's objective, muP learning-rate multipliers,
`train.nonfinite` and spike guard (tests/test_packed.py compares the two). The loop around the
step is the training loop's own pieces (training/periodic.py, metrics_log.py, throughput.py,
evaluator.py, summary.py), so the records and their means are the loop's. The learning rate lives in each model's optimizer state (`optax.inject_hyperparams`)
and scales the config's schedule shape (warmup, decay, final fraction), so one program serves
every learning rate.

Everything runs on one device (the first): no mesh, no sharding. Spreading the K axis over a
mesh is the natural extension and is not done yet.

Files written to WORKDIR when one is given:
  config.json           the resolved config (train.seed and optimizer.learning_rate are the
                        config's; each model's own are in the summary)
  metrics_{k}.jsonl     model k's logged steps, in the loop's metrics.jsonl format
  packed_summary.json   the list `train_packed` returns
  tensorboard/model_{k} model k's TensorBoard events and hparams (training/tensorboard.py)
  .lock                 held while the sweep runs (training/workdir.py), as by `train`
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
# tqdm.auto: a widget inside Jupyter and Colab (one updating bar, not a stream of \r chunks),
# the plain text bar everywhere else, so the command line's output is unchanged.
import tqdm.auto

from jaxmodels import config as config_lib
from jaxmodels import files, models
from jaxmodels.config import Config, OptimizerConfig
from jaxmodels.errors import UserError
from jaxmodels.models.interface import as_model
from jaxmodels.parallel import distributed
from jaxmodels.training import loop, mup, optim, packed_metrics, tasks
from jaxmodels.training import step as step_lib
from jaxmodels.training import workdir as workdir_lib
from jaxmodels.training.evaluator import Evaluator
from jaxmodels.training import tensorboard
from jaxmodels.training.metrics_log import MetricsLog
from jaxmodels.training.periodic import Periodic
from jaxmodels.training.run_checkpoint import LoopState
from jaxmodels.training.state import TrainState, count_params, init_state
from jaxmodels.training.summary import cache_size, metric_keys
from jaxmodels.training.throughput import Throughput


@dataclasses.dataclass(frozen=True)
class Variant:
    """One model of a packed sweep.

    seed:           parameter init, dropout and data order (a separate run's `train.seed`).
    learning_rate:  the peak learning rate; None takes the config's `optimizer.learning_rate`.
                    The schedule's shape (warmup, decay, final fraction) is the config's.
    init_scale:     multiplies every initial parameter of rank > 1 (dense and conv kernels,
                    attention projections, embedding tables) after init; biases and
                    normalisation scales and shifts (rank <= 1) are left alone. 1.0 is the
                    model's own init.

    These three are all a variant can change: the architecture, data, batch size, optimizer
    kind and schedule shape are the config's, shared by every model of the sweep (they must
    be: the models are one array program).
    """

    seed: int = 0
    learning_rate: float | None = None
    init_scale: float = 1.0

    def problems(self) -> list[str]:
        out = []
        seed = self.seed
        if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                or not 0 <= seed < 2**31):
            out.append(f"seed must be an integer in [0, 2**31), got {self.seed!r}")
        if self.learning_rate is not None and not _positive_number(self.learning_rate):
            out.append(f"learning_rate must be a positive number or None (the config's), got "
                       f"{self.learning_rate!r}")
        if not _positive_number(self.init_scale):
            out.append(f"init_scale must be a positive number, got {self.init_scale!r}")
        return out


def _positive_number(x) -> bool:
    return (isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)
            and math.isfinite(x) and x > 0)


def check_variants(variants: Sequence[Variant]) -> tuple[Variant, ...]:
    """The variants as a tuple, or a one-line UserError naming the first bad one."""
    variants = tuple(variants)
    if not variants:
        raise UserError("no variants to train: pass at least one packed.Variant(seed=...)")
    for k, v in enumerate(variants):
        if not isinstance(v, Variant):
            raise UserError(f"variant {k} is a {type(v).__name__}, not a packed.Variant: build it "
                            f"as packed.Variant(seed=..., learning_rate=..., init_scale=...)")
        problems = v.problems()
        if problems:
            raise UserError(f"variant {k}: {problems[0]}")
    return variants


def scale_init(params: Any, init_scale: float | jax.Array) -> Any:
    """`params` with every leaf of rank > 1 multiplied by `init_scale` (see `Variant`)."""
    return jax.tree.map(lambda p: p * jnp.asarray(init_scale, p.dtype) if p.ndim > 1 else p,
                        params)


def init_scaled_state(model, tx: optax.GradientTransformation, example: jax.Array,
                      seed: int | jax.Array, init_scale: float | jax.Array) -> TrainState:
    """`init_state` with the weights scaled by `init_scale`: what a separate run of a variant
    with init_scale != 1 starts from. Pure, so it can be vmapped over seeds and scales."""
    state = init_state(model, tx, example, seed)
    params = scale_init(state.params, init_scale)
    # Rebuilt from the scaled weights: some optimizers' state depends on the parameter values.
    return state.replace(params=params, opt_state=tx.init(params))


def unit_schedule(cfg: OptimizerConfig, total_steps: int) -> optim.Schedule:
    """The config's schedule for a peak learning rate of 1. Every schedule in `optim.SCHEDULES`
    is proportional to its learning rate, so `lr * unit_schedule(cfg, n)(t)` is the schedule a
    separate run with `optimizer.learning_rate=lr` follows (tested for each)."""
    return optim.SCHEDULES[cfg.schedule](dataclasses.replace(cfg, learning_rate=1.0), total_steps)


def injected_optimizer(cfg: OptimizerConfig, total_steps: int, learning_rate: float | jax.Array,
                       lr_multipliers=None) -> optax.GradientTransformation:
    """The config's optimizer with its peak learning rate a value in the optimizer state
    (`opt_state.hyperparams["learning_rate"]`), so one traced program trains any learning rate.

    The optimizer factories (`optim.OPTIMIZERS`) take the schedule as a callable, so the
    learning rate enters where a separate run's does (before weight decay in adafactor, for
    instance), not as a multiplier on the update. The clipping composed in front and the muP
    `lr_multipliers` (`mup.lr_multipliers`; None under the standard parametrization) mirror
    `optim.make` (tested against it).
    """
    unit = unit_schedule(cfg, total_steps)

    def factory(learning_rate):
        tx = optim.OPTIMIZERS[cfg.name](cfg, lambda count: learning_rate * unit(count), lr_multipliers)
        if cfg.grad_clip_norm is not None:
            tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
        return tx

    return optax.inject_hyperparams(factory)(learning_rate=learning_rate)


@dataclasses.dataclass(frozen=True)
class PackedSetup:
    """The task, model and the three jitted functions of a packed sweep (each compiles once)."""

    config: Config  # resolved, as the loop resolves it (vocabulary size filled in)
    variants: tuple[Variant, ...]
    task: Any  # tasks.ImageTask | tasks.LMTask
    model: Any
    total_steps: int
    steps_per_epoch: float
    init_fn: Any  # () -> TrainState with a leading K axis on every leaf
    train_step: Any  # (states [K], batches [K, B, ...]) -> (states, metrics [K]); states donated
    eval_step: Any  # (states [K], one batch [B, ...]) -> sums [K]

    @property
    def learning_rates(self) -> list[float]:
        return [self.config.optimizer.learning_rate if v.learning_rate is None else v.learning_rate
                for v in self.variants]


def setup(config: Config, variants: Sequence[Variant]) -> PackedSetup:
    """Checks the variants, loads the task and builds the jitted functions (nothing compiles
    until their first call). The step is the loop's own `make_train_step` with the config's
    objective, muP multipliers, `train.nonfinite` and spike guard, as a separate run builds it."""
    variants = check_variants(variants)
    if jax.process_count() > 1:
        raise UserError("packed sweeps run in one process: start it without --num-processes")
    task = tasks.build(config.data)
    config = dataclasses.replace(config, model=tasks.resolve_model(config.model, task))
    steps_per_epoch = task.train_size / config.data.batch_size
    total = loop.total_steps(config.train, steps_per_epoch)
    opt, t = config.optimizer, config.train
    loop.check_warmup(opt, total)  # a packed sweep refuses what a separate run would
    model = as_model(models.build(config.model))
    objective = loop.build_objective(config)
    example = jnp.asarray(task.example_inputs)
    unit = unit_schedule(opt, total)
    multipliers = mup.lr_multipliers(config.model, opt.name, model, example)

    seeds = np.array([v.seed for v in variants], np.int32)
    lrs = np.array([opt.learning_rate if v.learning_rate is None else v.learning_rate
                    for v in variants], np.float32)
    scales = np.array([v.init_scale for v in variants], np.float32)

    def init_one(seed, learning_rate, init_scale):
        tx = injected_optimizer(opt, total, learning_rate, multipliers)
        return init_scaled_state(model, tx, example, seed, init_scale)

    # The optimizer reads its learning rate from the state, so the one built here with the
    # config's value serves every model.
    tx = injected_optimizer(opt, total, opt.learning_rate, multipliers)
    single_step = step_lib.make_train_step(
        model, tx, objective, schedule=unit, microbatches=t.microbatches, nonfinite=t.nonfinite,
        spike_sigma=t.spike_sigma, spike_window=t.spike_window)

    def train_one(state: TrainState, batch):
        new_state, metrics = single_step(state, batch)
        # make_train_step reports its schedule argument; this model's rate is its own peak times
        # the shape.
        lr = state.opt_state.hyperparams["learning_rate"]
        return new_state, {**metrics, "learning_rate": lr * unit(state.step)}

    # lax.map rather than vmap: the same stacked states (bit for bit), but XLA compiles the
    # one-model init, dominated by the random initialisers, about twice as fast as its batched
    # form (4.5 s against 9 s of CPU for a 1-layer Transformer), and init runs only once.
    # The seeds, rates and scales are arguments, not constants: sweeps of K models differing
    # only in them share the init program as they share the step.
    init_fn = functools.partial(
        jax.jit(lambda *per_model: jax.lax.map(lambda args: init_one(*args), per_model)),
        seeds, lrs, scales)
    # Metrics packed as the loop's are (training/packed_metrics.py): one [K, n] array per step.
    train_step = jax.jit(jax.vmap(packed_metrics.packing(train_one)), donate_argnums=0)
    eval_step = jax.jit(jax.vmap(step_lib.make_eval_step(model, objective), in_axes=(0, None)))
    return PackedSetup(config, variants, task, model, total, steps_per_epoch, init_fn, train_step,
                       eval_step)


def stack_batches(batches: Sequence[dict]) -> dict:
    """K batches of one shape -> one batch with a leading K axis."""
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def evaluate(p: PackedSetup, states: TrainState, split: str, *, periodic: bool = False
             ) -> list[dict]:
    """Each model's loss and the objective's metrics over `split`, as `loop.run_eval` measures them: every
    batch is read once and shared by the K models; padded rows carry mask 0."""
    # {name: (sum [K, ...], count [K])}, added on the host as the loop's evaluation does.
    totals = distributed.sum_on_host(p.eval_step(states, batch)
                                     for batch in p.task.eval_batches(split, periodic=periodic))
    return [loop.mean_metrics({name: (total[k], float(count[k]))
                               for name, (total, count) in totals.items()})
            for k in range(len(p.variants))]


def _write_json(path: pathlib.Path, obj) -> None:
    files.write_atomic(path, json.dumps(obj, indent=2) + "\n")


def train_packed(config: Config, variants: Sequence[Variant],
                 workdir: str | os.PathLike | None = None, *, progress: bool = True) -> list[dict]:
    """Trains one model per variant of `config` in one compiled program; returns one summary
    dict per variant (in order): its seed, learning_rate, init_scale, step, train_* (the last
    logged interval's means, as in summary.json), val_* (the last periodic validation) and
    eval_* (on `data.eval_split`), named after the objective's loss and metrics (train_loss,
    train_accuracy, ... for cross-entropy), skipped_updates, stopped, plus the sweep's shared
    timings under "packed".

    Logging and validation follow the config as the loop does (`train.log_every`,
    `train.eval_every` or each epoch); the bar shows when both `progress` and
    `train.progress` are true.
    """
    t_start = time.perf_counter()
    check_variants(variants)  # before anything is created on disk
    # `run` creates the workdir and takes its lock: after the data loaded, so a dataset error
    # leaves no empty folder behind.
    workdir = pathlib.Path(workdir) if workdir is not None else None
    _, summaries = run(setup(config, variants), workdir, progress=progress, t_start=t_start)
    return summaries


def _split(fetched: list, k: int) -> list:
    """Model k's (step, metrics) out of the stacked ones fetched from the device."""
    return [(step, {key: v[k] for key, v in m.items()}) for step, m in fetched]


def run(p: PackedSetup, workdir: pathlib.Path | None = None, *, progress: bool = True,
        t_start: float | None = None) -> tuple[TrainState, list[dict]]:
    """The training loop of `train_packed` over a built setup: returns the final stacked
    states (leading K axis; `unstack` takes one model out) and the summaries. The workdir's
    lock (training/workdir.py) is held throughout, as `train` holds it: a `train`, `eval` or
    another packed sweep into the same folder meanwhile is a one-line error, and so is this
    one while another process holds it (before anything is written)."""
    if workdir is None:
        return _run(p, None, progress=progress, t_start=t_start)
    workdir = pathlib.Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"workdir {str(workdir)!r} cannot be created ({e.strerror}): pass a "
                        f"folder you can write to") from None
    with workdir_lib.locked(workdir):
        return _run(p, workdir, progress=progress, t_start=t_start)


def _run(p: PackedSetup, workdir: pathlib.Path | None, *, progress: bool,
         t_start: float | None) -> tuple[TrainState, list[dict]]:
    """The loop's own pieces around the vmapped step: one Periodic schedule, one Throughput meter
    (the models share every step's time), one Evaluator and one MetricsLog per model, so the
    records are the loop's, first (compiling) step included. Under train.nonfinite=stop a model
    whose loss or gradient goes non-finite stops being logged, and its summary says so under
    "stopped" (the others train on; a separate run of it would have stopped there)."""
    t_start = time.perf_counter() if t_start is None else t_start
    cfg, k_models = p.config, len(p.variants)
    if workdir is not None:
        files.write_atomic(workdir / "config.json", config_lib.to_json(cfg) + "\n")
        p.task.save(workdir)

    streams = [p.task.train_batches(v.seed) for v in p.variants]
    states = p.init_fn()
    n_params = count_params(jax.tree.map(lambda x: x[0], states.params))
    print(f"{cfg.name}: {k_models} packed {type(p.model).__name__} models of {n_params:,} "
          f"parameters on {p.task.describe()}; {p.total_steps:,} steps of batch "
          f"{cfg.data.batch_size} each, on one {jax.devices()[0].platform} device", file=sys.stderr)

    shared = LoopState()  # the stacked pending metrics and the shared timings
    meter = Throughput(shared, batch_size=cfg.data.batch_size,
                       tokens_per_example=p.task.tokens_per_example, n_devices=1)
    guarded = cfg.train.nonfinite == "skip" or cfg.train.spike_sigma is not None
    logs = [MetricsLog(LoopState(), [], None, guarded=guarded) for _ in range(k_models)]
    stopped: list[dict | None] = [None] * k_models
    when = Periodic.from_config(cfg, p.total_steps, p.steps_per_epoch)
    evaluator = Evaluator(lambda st, split, periodic: evaluate(p, st, split, periodic=periodic),
                          cfg.data.eval_split, meter=meter)
    bar = tqdm.auto.tqdm(total=p.total_steps, disable=not (progress and cfg.train.progress),
                         unit="step", dynamic_ncols=True, file=sys.stderr)
    try:
        for step in range(1, p.total_steps + 1):
            states, metrics = p.train_step(states, stack_batches([next(s) for s in streams]))
            shared.pending.append((step, metrics))
            meter.stepped(step == 1, metrics)
            bar.update(1)
            step_records: list[dict | None] = [None] * k_models
            if when.log_due(step):
                fetched = jax.device_get(shared.pending)
                shared.pending = []
                rates = meter.interval()
                for k, log in enumerate(logs):
                    log.ls.pending = _split(fetched, k)
                    bad = log.nonfinite() if cfg.train.nonfinite == "stop" else None
                    if bad is not None and stopped[k] is None:
                        stopped[k] = {"step": bad[0], "reason": f"non-finite {bad[1]} ({bad[2]})"}
                    step_records[k] = {**log.interval(step, when.epoch(step)), **rates}
                bar.set_postfix(loss=f"{min(log.last_train.get('loss', np.inf) for log in logs):.4f}")
            if when.eval_due(step):
                for k, val in enumerate(evaluator.periodic(states)):
                    step_records[k] = {**(step_records[k] or {"step": step, "epoch": when.epoch(step)}),
                                       **val}
            for k, record in enumerate(step_records):
                if record is not None and stopped[k] is None:
                    logs[k].write(record)
            if all(stopped):
                break
    finally:
        bar.close()

    final = evaluator.final(states)
    steps_done = jax.device_get(states.step)
    timing = meter.totals()
    packed_info = {
        "models": k_models,
        "wall_time_s": time.perf_counter() - t_start,
        "compile_time_s": timing["compile_time_s"],
        "eval_time_s": timing["eval_time_s"],
        # Per model, after the first (compiling) step, evaluation excluded.
        "examples_per_sec_per_model": timing["examples_per_sec"],
        "compilations": {"train_step": cache_size(p.train_step),
                         "eval_step": cache_size(p.eval_step)},
        "device": str(jax.devices()[0]),
    }
    summaries = []
    for k, (v, lr) in enumerate(zip(p.variants, p.learning_rates)):
        summaries.append({
            "name": cfg.name,
            "seed": int(v.seed),
            "learning_rate": float(lr),
            "init_scale": float(v.init_scale),
            "step": int(steps_done[k]),
            "epochs": p.total_steps / p.steps_per_epoch,
            **metric_keys(logs[k].last_train, logs[k].last_val, final[k], cfg.data.eval_split),
            "params": n_params,
            "skipped_updates": logs[k].ls.skipped,
            "stopped": stopped[k],
            "packed": packed_info,
        })
    if workdir is not None:
        for k in range(k_models):
            files.write_atomic(
                workdir / f"metrics_{k}.jsonl", "".join(json.dumps(r) + "\n" for r in logs[k].records))
        _write_json(workdir / "packed_summary.json", summaries)
        if cfg.train.tensorboard:
            tensorboard.write_packed(workdir, cfg, [log.records for log in logs], summaries)
    best = min(range(k_models), key=lambda k: final[k]["loss"])
    print(f"{cfg.name}: {k_models} models in {packed_info['wall_time_s']:.1f} s (compile "
          f"{packed_info['compile_time_s']:.1f} s); best {cfg.data.eval_split} loss "
          f"{final[best]['loss']:.4f} (variant {best}: {p.variants[best]})", file=sys.stderr)
    return states, summaries


def unstack(states: TrainState, k: int) -> TrainState:
    """Model k's state out of the stacked ones (for comparisons and saving one model)."""
    return jax.tree.map(lambda x: x[k], states)
