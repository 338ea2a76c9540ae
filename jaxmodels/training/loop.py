"""The training loop: `train(config, workdir) -> summary` and `evaluate(config, workdir)`.

The loop is plain Python around two jitted pure functions. It owns the I/O the steps must not do:
batches in, metrics out (one step late, so dispatch stays asynchronous), files in the workdir.

Files written to WORKDIR:
  config.json     the resolved config
  metrics.jsonl   one JSON object per logged step (train means over the interval; val_* when
                  validation ran at that step)
  summary.json    final numbers; eval_* are measured on the config's held-out split
  curves.png      learning curves
  weights/        final params and model collections (orbax), read by `jaxmodels eval`
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxmodels import config as config_lib
from jaxmodels import models
from jaxmodels.config import Config
from jaxmodels.errors import UserError
from jaxmodels.parallel import distributed
from jaxmodels.parallel import mesh as mesh_lib
from jaxmodels.parallel import rules as rules_lib
from jaxmodels.parallel import sharding as sharding_lib
from jaxmodels.training import checkpoint, mup, optim, plots, tasks
from jaxmodels.training import step as step_lib
from jaxmodels.training.state import TrainState, abstract_variables, count_params, init_state


@dataclasses.dataclass(frozen=True)
class Setup:
    """What both training and evaluation derive from a config: task, model, jitted functions."""

    config: Config  # resolved: model fields the task decides (vocabulary size) are filled in
    task: Any  # tasks.ImageTask | tasks.LMTask
    model: Any
    total_steps: int
    steps_per_epoch: float
    mesh: Any
    state_sharding: Any
    batch_sharding: Any
    init_fn: Any  # jitted: () -> TrainState, born with its sharding
    train_step: Any  # jitted, state donated
    eval_step: Any  # jitted
    parallel: sharding_lib.Report  # mesh, per-device bytes, what could not be split


def total_steps(train_cfg: config_lib.TrainConfig, steps_per_epoch: float) -> int:
    """`train.steps` when set, else ceil(epochs x steps per epoch)."""
    if train_cfg.steps is not None:
        return train_cfg.steps
    return max(1, math.ceil(train_cfg.epochs * steps_per_epoch - 1e-9))


def setup(config: Config) -> Setup:
    # Mesh mistakes are cheap to find: report them before loading data or compiling anything.
    mesh = mesh_lib.make_mesh(config.parallel)
    mesh_lib.check_batch_size(config.data.batch_size, mesh)
    task = tasks.build(config.data)
    config = dataclasses.replace(config, model=tasks.resolve_model(config.model, task))
    steps_per_epoch = task.train_size / config.data.batch_size
    steps = total_steps(config.train, steps_per_epoch)

    opt = config.optimizer
    if opt.schedule != "constant" and opt.warmup_steps >= steps:
        raise UserError(f"optimizer.warmup_steps={opt.warmup_steps} is not below the {steps} training "
                        f"steps: lower it (e.g. optimizer.warmup_steps={steps // 10})")
    model = models.build(config.model)
    example = jnp.asarray(task.example_inputs)
    multipliers = mup.lr_multipliers(config.model, opt.name, model, example)
    tx, schedule = optim.make(config.optimizer, steps, lr_multipliers=multipliers)

    c = compile_steps(model, tx, schedule, example, config.parallel, mesh, seed=config.train.seed,
                      microbatches=config.train.microbatches)
    return Setup(config, task, model, steps, steps_per_epoch, mesh, c.state_sharding,
                 c.batch_sharding, c.init_fn, c.train_step, c.eval_step, c.report)


@dataclasses.dataclass(frozen=True)
class Compiled:
    state_sharding: Any  # TrainState-shaped tree of NamedShardings
    batch_sharding: Any
    init_fn: Any  # jitted: () -> TrainState, born sharded
    train_step: Any  # jitted, state donated
    eval_step: Any  # jitted
    report: sharding_lib.Report


def _under_activation_rules(fn, mesh, preset: str):
    """`fn` traced with the preset's activation rules and the mesh's abstract shape in context,
    so the models' `layers.constrain` calls become sharding constraints (see rules.py)."""
    rules = rules_lib.activation_rules(preset, dict(mesh.shape))

    @functools.wraps(fn)
    def traced(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(rules):
            return fn(*args)

    return traced


def compile_steps(model, tx, schedule, example, parallel: config_lib.ParallelConfig, mesh, *,
                  seed: int = 0, microbatches: int = 1) -> Compiled:
    """Shardings from the rules table and the jitted init/train/eval over `mesh` (importable, so
    tests compare any mesh with a one-device one)."""
    init = lambda: init_state(model, tx, example, seed)  # noqa: E731
    # Shardings are derived from shapes and logical names alone, before any parameter exists.
    state_sharding, report = sharding_lib.state_shardings(
        jax.eval_shape(init), abstract_variables(model, example)["params"], mesh,
        parallel.preset, threshold_bytes=parallel.replication_threshold_bytes,
        strict=parallel.strict)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = mesh_lib.replicated(mesh)
    # The state is created inside jit with its output sharding, so it is born where it lives.
    init_fn = jax.jit(init, out_shardings=state_sharding)
    train_step = jax.jit(
        _under_activation_rules(
            step_lib.make_train_step(model, tx, schedule, microbatches=microbatches), mesh,
            parallel.preset),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(_under_activation_rules(step_lib.make_eval_step(model), mesh, parallel.preset),
                        in_shardings=(state_sharding, batch_sharding),
                        out_shardings=replicated)
    return Compiled(state_sharding, batch_sharding, init_fn, train_step, eval_step, report)


def _pad_batch(batch: dict, multiple: int) -> dict:
    """Pads the leading dimension up to a multiple of `multiple` with masked-out rows, so any
    evaluation batch size splits over the data-parallel devices (sums are unchanged)."""
    n = len(batch["mask"])
    extra = -n % multiple
    if not extra:
        return batch
    return {k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


def run_eval(s: Setup, state: TrainState, split: str, *, periodic: bool = False) -> dict:
    """Loss and accuracy over `split` (every example or token; the last batch padded and
    masked). `periodic` lets a task read a fixed subset during training (text)."""
    sums = None
    for batch in s.task.eval_batches(split, periodic=periodic):
        batch = _pad_batch(batch, mesh_lib.data_parallel_size(s.mesh))
        out = s.eval_step(state, distributed.put_batch(batch, s.batch_sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    count = float(sums["count"])
    return {"loss": float(sums["loss_sum"]) / count, "accuracy": float(sums["correct"]) / count,
            "examples": int(count)}


def _prepare_workdir(workdir: pathlib.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"workdir {str(workdir)!r} is not writable ({e.strerror}): pass --workdir with a folder you can write to") from None


def _write_json(path: pathlib.Path, obj) -> None:
    # Write-then-rename, so a crash never leaves a half-written file behind.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _mean_metrics(pending: list[dict]) -> dict:
    fetched = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _cache_size(jitted) -> int | None:
    # Number of compiled variants; 1 means no retrace after the first call. Private in JAX, so
    # tolerate its absence rather than fail a run.
    size = getattr(jitted, "_cache_size", None)
    return size() if callable(size) else None


def train(config: Config, workdir: str | os.PathLike) -> dict:
    """Trains `config` and writes into `workdir`; returns the summary dict (also summary.json)."""
    workdir = pathlib.Path(workdir)
    # With several processes (multi-host) process 0 writes every file; the others compute.
    main = distributed.is_main()
    if main:
        _prepare_workdir(workdir)
    t_start = time.perf_counter()
    s = setup(config)
    cfg = s.config
    if main:
        (workdir / "config.json").write_text(config_lib.to_json(cfg) + "\n")
        s.task.save(workdir)
    batches = s.task.train_batches(cfg.train.seed)

    def eval_due(step: int) -> bool:
        if cfg.train.eval_every is not None:
            return step % cfg.train.eval_every == 0
        # At each epoch boundary crossed by this step (batches may straddle one).
        return int(step / s.steps_per_epoch) > int((step - 1) / s.steps_per_epoch)

    state = s.init_fn()
    n_params = count_params(state.params)
    log = sys.stderr if main else io.StringIO()
    print(f"{cfg.name}: {type(s.model).__name__} with {n_params:,} parameters on "
          f"{s.task.describe()}; "
          f"{s.total_steps:,} steps of batch {cfg.data.batch_size} "
          f"({s.total_steps / s.steps_per_epoch:.2f} epochs) on {s.mesh.devices.size} "
          f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)", file=log)
    print(f"{cfg.name}: {s.parallel.describe()}", file=log)

    metrics_file = (workdir / "metrics.jsonl").open("w") if main else io.StringIO()
    records: list[dict] = []
    pending: list[dict] = []
    train_time = 0.0  # seconds spent in training steps after the first (compiling) one
    eval_time = 0.0
    compile_time = 0.0
    interval_start = time.perf_counter()
    interval_examples = 0
    last_train: dict = {}
    bar = tqdm.tqdm(total=s.total_steps, disable=not (cfg.train.progress and main), unit="step",
                    dynamic_ncols=True, file=sys.stderr)
    try:
        for i in range(s.total_steps):
            batch = distributed.put_batch(next(batches), s.batch_sharding)
            state, metrics = s.train_step(state, batch)
            if i == 0:
                # Only the first step blocks: it measures compile time and starts the clock.
                jax.block_until_ready(metrics)
                compile_time = time.perf_counter() - interval_start
                interval_start = time.perf_counter()
            else:
                pending.append(metrics)
                interval_examples += cfg.data.batch_size
            step = i + 1
            bar.update(1)
            is_last = step == s.total_steps
            if (step % cfg.train.log_every == 0 or is_last) and pending:
                record = {"step": step, "epoch": round(step / s.steps_per_epoch, 4),
                          **_mean_metrics(pending)}
                elapsed = time.perf_counter() - interval_start
                train_time += elapsed
                record["examples_per_sec"] = interval_examples / max(elapsed, 1e-9)
                if s.task.tokens_per_example > 1:
                    record["tokens_per_sec"] = record["examples_per_sec"] * s.task.tokens_per_example
                pending, interval_examples = [], 0
                last_train = record
                bar.set_postfix(loss=f"{record['loss']:.4f}",
                                ex_s=f"{record['examples_per_sec']:,.0f}")
                interval_start = time.perf_counter()
            else:
                record = None
            if eval_due(step) or is_last:
                t0 = time.perf_counter()
                val = run_eval(s, state, "validation", periodic=True)
                eval_seconds = time.perf_counter() - t0
                eval_time += eval_seconds
                # Validation time is not training time: move the interval's clock past it.
                interval_start += eval_seconds
                record = record or {"step": step, "epoch": round(step / s.steps_per_epoch, 4)}
                record.update(val_loss=val["loss"], val_accuracy=val["accuracy"])
                if main:
                    bar.write(f"step {step}: val_loss {val['loss']:.4f} val_accuracy "
                              f"{100 * val['accuracy']:.2f}%")
            if record is not None:
                records.append(record)
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
    finally:
        bar.close()
        metrics_file.close()

    final = run_eval(s, state, cfg.data.eval_split)
    checkpoint.save_weights(workdir, state)  # every process: orbax gathers the shards
    trained_examples = (s.total_steps - 1) * cfg.data.batch_size
    summary = {
        "name": cfg.name,
        "step": int(jax.device_get(state.step)),
        "epochs": s.total_steps / s.steps_per_epoch,
        "train_loss": last_train.get("loss"),
        "train_accuracy": last_train.get("accuracy"),
        "val_loss": records[-1].get("val_loss") if records else None,
        "val_accuracy": records[-1].get("val_accuracy") if records else None,
        "eval_split": cfg.data.eval_split,
        "eval_loss": final["loss"],
        "eval_accuracy": final["accuracy"],
        "eval_examples": final["examples"],
        "params": n_params,
        "wall_time_s": time.perf_counter() - t_start,
        "compile_time_s": compile_time,
        "eval_time_s": eval_time,
        # Training throughput after the first (compiling) step, evaluation excluded.
        "examples_per_sec": trained_examples / train_time if train_time > 0 else None,
        "tokens_per_sec": (trained_examples * s.task.tokens_per_example / train_time
                           if train_time > 0 and s.task.tokens_per_example > 1 else None),
        "compilations": {"train_step": _cache_size(s.train_step),
                         "eval_step": _cache_size(s.eval_step)},
        "devices": [str(d) for d in s.mesh.devices.flat],
        "parallel": s.parallel.as_dict(),
        "jax_version": jax.__version__,
    }
    if not main:
        return summary
    _write_json(workdir / "summary.json", summary)
    plots.learning_curves(records, workdir / "curves.png", title=f"{cfg.name} ({type(s.model).__name__})")
    print(f"{cfg.name}: {cfg.data.eval_split} accuracy {100 * final['accuracy']:.2f}% "
          f"(loss {final['loss']:.4f}, {final['examples']:,} examples) after {summary['step']:,} "
          f"steps in {summary['wall_time_s']:.1f} s; {summary['examples_per_sec'] or 0:,.0f} train examples/s",
          file=sys.stderr)
    return summary


def evaluate(config: Config, workdir: str | os.PathLike, split: str | None = None) -> dict:
    """Evaluates the weights saved in `workdir` on `split` (default: the config's eval split)."""
    workdir = pathlib.Path(workdir)
    s = setup(config)
    # A fresh state gives structure and placement; its weights are then replaced by the saved ones.
    fresh = s.init_fn()
    saved = checkpoint.restore_weights(workdir, {"params": fresh.params, "model_state": fresh.model_state})
    state = jax.device_put(fresh.replace(**saved), s.state_sharding)
    split = split or config.data.eval_split
    result = run_eval(s, state, split)
    result = {"split": split, **result}
    _write_json(workdir / f"eval_{split}.json", result)
    return result
