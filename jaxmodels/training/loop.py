"""The training loop: `train(config, workdir) -> summary` and `evaluate(config, workdir)`.

The loop is plain Python around two jitted pure functions. It owns the I/O the steps must not do:
batches in, metrics out (one step late, so dispatch stays asynchronous), files in the workdir.

Files written to WORKDIR:
  config.json     the resolved config
  metrics.jsonl   one JSON object per logged step (train means over the interval; val_* when
                  validation ran at that step)
  checkpoints/    whole-run checkpoints (see checkpoint.py): a launch into a workdir that holds one
                  resumes from it, and ends bitwise where an uninterrupted run would have
  summary.json    final numbers; eval_* are measured on the config's held-out split
  curves.png      learning curves
  weights/        final params and model collections (orbax), read by `jaxmodels eval`

SIGTERM or SIGINT during training finishes the current step, saves a checkpoint at it, and stops
with `RunStopped` (with several processes, all of them one step later, whichever received it:
parallel/stop_vote.py); a non-finite loss or gradient norm under train.nonfinite=stop stops without
saving anything after the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import signal
import sys
import threading
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
from jaxmodels.errors import RunStopped, UserError
from jaxmodels.parallel import distributed
from jaxmodels.parallel import mesh as mesh_lib
from jaxmodels.parallel import rules as rules_lib
from jaxmodels.parallel import sharding as sharding_lib
from jaxmodels.parallel import stop_vote
# Accounting and bookkeeping only (analytic FLOPs, device peaks, the results table):
# scaling/flops.py, hardware.py and results.py import no training code, so this does not turn
# the cli -> scaling -> training direction around.
from jaxmodels.accounting import flops as flops_lib
from jaxmodels.accounting import hardware, results
from jaxmodels.training import checkpoint, mup, optim, plots, resume, tasks
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


def check_warmup(opt: config_lib.OptimizerConfig, steps: int) -> None:
    """A decaying schedule needs its warmup to end before the run does."""
    if opt.schedule != "constant" and opt.warmup_steps >= steps:
        raise UserError(f"optimizer.warmup_steps={opt.warmup_steps} is not below the {steps} training "
                        f"steps: lower it (e.g. optimizer.warmup_steps={steps // 10})")


def setup(config: Config) -> Setup:
    # Mesh mistakes are cheap to find: report them before loading data or compiling anything.
    mesh = mesh_lib.make_mesh(config.parallel)
    mesh_lib.check_batch_size(config.data.batch_size, mesh)
    task = tasks.build(config.data)
    config = dataclasses.replace(config, model=tasks.resolve_model(config.model, task))
    steps_per_epoch = task.train_size / config.data.batch_size
    steps = total_steps(config.train, steps_per_epoch)

    opt = config.optimizer
    check_warmup(opt, steps)
    model = models.build(config.model)
    example = jnp.asarray(task.example_inputs)
    multipliers = mup.lr_multipliers(config.model, opt.name, model, example)
    tx, schedule = optim.make(config.optimizer, steps, lr_multipliers=multipliers)

    t = config.train
    c = compile_steps(model, tx, schedule, example, config.parallel, mesh, seed=t.seed,
                      microbatches=t.microbatches, nonfinite=t.nonfinite,
                      spike_sigma=t.spike_sigma, spike_window=t.spike_window)
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
                  seed: int = 0, microbatches: int = 1, nonfinite: str = "stop",
                  spike_sigma: float | None = None, spike_window: int = 100) -> Compiled:
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
            step_lib.make_train_step(model, tx, schedule, microbatches=microbatches,
                                     nonfinite=nonfinite, spike_sigma=spike_sigma,
                                     spike_window=spike_window), mesh,
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
    dp = mesh_lib.data_parallel_size(s.mesh)
    sums = distributed.sum_on_host(
        s.eval_step(state, distributed.put_batch(_pad_batch(batch, dp), s.batch_sharding))
        for batch in s.task.eval_batches(split, periodic=periodic))
    count = sums["count"]
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


def _cache_size(jitted) -> int | None:
    # Number of compiled variants; 1 means no retrace after the first call. Private in JAX, so
    # tolerate its absence rather than fail a run.
    size = getattr(jitted, "_cache_size", None)
    return size() if callable(size) else None


# ---------------------------------------------------------------------------------------------
# What the loop carries between steps besides the TrainState, saved with every checkpoint.


@dataclasses.dataclass
class LoopState:
    """Host-side progress: everything a resumed run needs to log and time exactly as an
    uninterrupted one (the data position lives in the batch stream's own state)."""

    data: dict | None = None  # the train batch stream's get_state()
    # (step, metrics) of steps since the last logged line; metrics as float32 numbers, so the
    # interval mean of a resumed run is computed from the very same values.
    pending: list = dataclasses.field(default_factory=list)
    skipped: int = 0  # updates dropped by the non-finite / spike guard
    timed_examples: int = 0  # examples of steps that were timed (not a session's first step)
    train_time: float = 0.0
    eval_time: float = 0.0
    compile_time: float = 0.0
    wall_time: float = 0.0  # of earlier sessions
    resumed_from: list = dataclasses.field(default_factory=list)

    def to_json(self, batches, pending_host: list) -> dict:
        out = dataclasses.asdict(self)
        out["data"] = batches.get_state()
        out["pending"] = [[step, {k: float(v) for k, v in m.items()}] for step, m in pending_host]
        return out

    @classmethod
    def from_json(cls, d: dict) -> LoopState:
        d = dict(d)
        d["pending"] = [(int(step), {k: np.float32(v) for k, v in m.items()})
                        for step, m in d.get("pending", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _interval_record(fetched: list, guarded: bool) -> dict:
    """Means over the interval's steps; a step whose update was skipped does not enter them (its
    loss may be NaN), and the number skipped is reported instead."""
    metrics = [m for _, m in fetched]
    accepted = [m for m in metrics if not m.get("skipped", 0)] or metrics
    out = {k: float(np.mean([m[k] for m in accepted])) for k in metrics[0] if k != "skipped"}
    if guarded:
        out["skipped"] = int(sum(float(m["skipped"]) for m in metrics))
    return out


def _first_nonfinite(fetched: list) -> tuple[int, str, float] | None:
    for step, m in fetched:
        for key in ("loss", "grad_norm"):
            if not np.isfinite(m[key]):
                return step, key, float(m[key])
    return None


class _SignalFlag:
    """Records SIGTERM/SIGINT instead of dying mid-step; the loop stops at the next step boundary.
    A second signal interrupts at once. Handlers exist only while the loop runs, and only when it
    runs in the main thread (Python allows handlers nowhere else)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _read_records(path: pathlib.Path, upto_step: int) -> list[dict]:
    """metrics.jsonl lines up to a checkpoint's step (a killed run may have logged past it)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= upto_step:
            records.append(record)
    return records


def abstract_state(init_fn, state_sharding):
    """The train state as shapes, dtypes and target shardings (nothing allocated): what a
    checkpoint restores onto, whatever layout it was saved from."""
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        jax.eval_shape(init_fn), state_sharding)


def _resume(s: Setup, ckpt: checkpoint.Checkpoints, workdir: pathlib.Path, log):
    """(state, LoopState, records) from the newest usable checkpoint, or None for a fresh run."""
    steps = ckpt.steps()
    if not steps:
        return None
    current = config_lib.to_dict(s.config)
    saved = ckpt.saved_config(steps[-1])
    if saved is not None:  # checked before touching the state: a mismatch is not corruption
        resume.check_resume(saved, current, workdir, steps[-1])
    abstract = abstract_state(s.init_fn, s.state_sharding)
    restored = ckpt.restore_latest(abstract, log=log)
    if restored is None:
        return None
    allowed = resume.check_resume(restored.config, current, workdir, restored.step)
    if restored.step > s.total_steps:
        raise UserError(f"the checkpoint in {str(workdir)!r} is at step {restored.step}, past this "
                        f"config's {s.total_steps} steps: raise train.steps (or train.epochs), or "
                        f"pass --restart to start over")
    print(f"{s.config.name}: resuming from the checkpoint of step {restored.step} in "
          f"{ckpt.directory}" + (f" with changes: {'; '.join(allowed)}" if allowed else ""),
          file=log)
    # Restored arrays may be views of host memory orbax read into (on CPU); the train step
    # donates the state, so hand it buffers XLA allocated itself.
    state = jax.tree.map(lambda x: x.copy(), restored.state)
    loop_state = LoopState.from_json(restored.loop)
    loop_state.resumed_from.append(restored.step)
    records = _read_records(workdir / "metrics.jsonl", restored.step)
    return state, loop_state, records


def train(config: Config, workdir: str | os.PathLike, *, restart: bool = False) -> dict:
    """Trains `config` into `workdir`, continuing from the newest checkpoint there unless
    `restart`; returns the summary dict (also summary.json)."""
    workdir = pathlib.Path(workdir)
    # With several processes (multi-host) process 0 writes every file; the others compute.
    main = distributed.is_main()
    if main:
        _prepare_workdir(workdir)
    t_start = time.perf_counter()
    s = setup(config)  # every config problem surfaces here, before any file changes
    cfg = s.config
    log = sys.stderr if main else io.StringIO()
    if restart and main:
        removed = checkpoint.remove_checkpoints(workdir)
        if removed:
            print(f"{cfg.name}: --restart: removed the checkpoints of steps {removed}", file=log)
    ckpt = checkpoint.Checkpoints(workdir, cfg.checkpoint)
    try:
        return _train(s, ckpt, workdir, main, log, t_start)
    finally:
        ckpt.close()


def _accounting(s: Setup, log):
    """(Accounting, Peak) for MFU: analytic FLOPs of this model and the devices' peak; either
    may be None (a family the accounting does not know; a device without a known peak)."""
    try:
        acc = flops_lib.account(s.config.model, tuple(s.task.example_inputs.shape[1:]))
    except UserError as e:
        print(f"{s.config.name}: no FLOP accounting, so no MFU ({e})", file=log)
        return None, None
    return acc, hardware.peak_flops(s.mesh.devices.flat[0])


def _utilisation(acc, peak, examples: int, seconds: float, n_devices: int) -> dict:
    """MFU (model FLOPs) and HFU (hardware FLOPs: remat's recomputation included) of `examples`
    trained in `seconds`; None where unknown."""
    if acc is None or peak is None or seconds <= 0 or examples <= 0:
        return {"mfu": None, "hfu": None}
    return {"mfu": hardware.mfu(acc.model_flops_per_example * examples, seconds, n_devices, peak),
            "hfu": hardware.mfu(acc.hardware_flops_per_example * examples, seconds, n_devices, peak)}


def _train(s: Setup, ckpt: checkpoint.Checkpoints, workdir: pathlib.Path, main: bool, log,
           t_start: float) -> dict:
    cfg = s.config
    acc, peak = _accounting(s, log)
    n_devices = s.mesh.devices.size
    resumed = _resume(s, ckpt, workdir, log)
    if resumed is None:
        state, ls, records = s.init_fn(), LoopState(), []
    else:
        state, ls, records = resumed
    batches = s.task.train_batches(cfg.train.seed)
    if ls.data is not None:
        batches.set_state(ls.data)
    start_step = int(jax.device_get(state.step))
    if main:
        (workdir / "config.json").write_text(config_lib.to_json(cfg) + "\n")
        s.task.save(workdir)
        # Rewritten whole, so lines a killed run logged past its checkpoint are dropped.
        tmp = workdir / "metrics.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, workdir / "metrics.jsonl")
    guarded = cfg.train.nonfinite == "skip" or cfg.train.spike_sigma is not None

    def eval_due(step: int) -> bool:
        if cfg.train.eval_every is not None:
            return step % cfg.train.eval_every == 0
        # At each epoch boundary crossed by this step (batches may straddle one).
        return int(step / s.steps_per_epoch) > int((step - 1) / s.steps_per_epoch)

    n_params = count_params(state.params)
    if resumed is None:
        print(f"{cfg.name}: {type(s.model).__name__} with {n_params:,} parameters on "
              f"{s.task.describe()}; "
              f"{s.total_steps:,} steps of batch {cfg.data.batch_size} "
              f"({s.total_steps / s.steps_per_epoch:.2f} epochs) on {s.mesh.devices.size} "
              f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)", file=log)
    print(f"{cfg.name}: {s.parallel.describe()}", file=log)

    def fetch_pending() -> list:
        ls.pending = jax.device_get(ls.pending)
        return ls.pending

    def stop_if_nonfinite(fetched: list) -> None:
        bad = _first_nonfinite(fetched) if cfg.train.nonfinite == "stop" else None
        if bad is None:
            return
        step, key, value = bad
        kept = ckpt.steps()
        where = (f"the last good checkpoint is step {kept[-1]} in {ckpt.directory} (relaunching "
                 f"resumes there)" if kept else "no checkpoint was saved before it")
        raise RunStopped(f"non-finite {key} ({value}) at step {step}: stopped; {where}; lower "
                         f"optimizer.learning_rate, set optimizer.grad_clip_norm, or set "
                         f"train.nonfinite=skip to drop such updates", exit_code=3)

    def save(step: int, val: dict | None) -> None:
        fetched = fetch_pending()
        stop_if_nonfinite(fetched)  # never checkpoint a state that went non-finite
        loop_json = dataclasses.replace(ls, wall_time=ls.wall_time + time.perf_counter() - t_start)
        ckpt.save(step, state, loop_json.to_json(batches, fetched), config_lib.to_dict(cfg),
                  metrics=val)

    metrics_file = (workdir / "metrics.jsonl").open("a") if main else io.StringIO()
    last_train = next((r for r in reversed(records) if "loss" in r), {})
    interval_start = time.perf_counter()
    interval_examples = 0
    every = cfg.checkpoint.every_steps
    bar = tqdm.tqdm(total=s.total_steps, initial=start_step,
                    disable=not (cfg.train.progress and main), unit="step", dynamic_ncols=True,
                    file=sys.stderr)
    try:
        with _SignalFlag() as signals:
            vote = stop_vote.StopVote(s.mesh)  # every process stops at the same step
            for step in range(start_step + 1, s.total_steps + 1):
                batch = distributed.put_batch(next(batches), s.batch_sharding)
                state, metrics = s.train_step(state, batch)
                ls.pending.append((step, metrics))
                if step == start_step + 1:
                    # Only a session's first step blocks: it measures compile time and starts
                    # the clock; its examples are not timed.
                    jax.block_until_ready(metrics)
                    ls.compile_time += time.perf_counter() - interval_start
                    interval_start = time.perf_counter()
                else:
                    interval_examples += cfg.data.batch_size
                bar.update(1)
                is_last = step == s.total_steps
                record = None
                if step % cfg.train.log_every == 0 or is_last:
                    fetched = fetch_pending()
                    stop_if_nonfinite(fetched)
                    record = {"step": step, "epoch": round(step / s.steps_per_epoch, 4),
                              **_interval_record(fetched, guarded)}
                    ls.skipped += record.get("skipped", 0)
                    elapsed = time.perf_counter() - interval_start
                    ls.train_time += elapsed
                    ls.timed_examples += interval_examples
                    record["examples_per_sec"] = interval_examples / max(elapsed, 1e-9)
                    util = _utilisation(acc, peak, interval_examples, elapsed, n_devices)
                    if util["mfu"] is not None:
                        record["mfu"] = util["mfu"]
                        if util["hfu"] != util["mfu"]:  # remat recomputes part of the forward
                            record["hfu"] = util["hfu"]
                    if s.task.tokens_per_example > 1:
                        record["tokens_per_sec"] = record["examples_per_sec"] * s.task.tokens_per_example
                    ls.pending, interval_examples = [], 0
                    last_train = record
                    bar.set_postfix(loss=f"{record['loss']:.4f}",
                                    ex_s=f"{record['examples_per_sec']:,.0f}")
                    interval_start = time.perf_counter()
                val = None
                if eval_due(step) or is_last:
                    t0 = time.perf_counter()
                    v = run_eval(s, state, "validation", periodic=True)
                    eval_seconds = time.perf_counter() - t0
                    ls.eval_time += eval_seconds
                    # Validation time is not training time: move the interval's clock past it.
                    interval_start += eval_seconds
                    val = {"val_loss": v["loss"], "val_accuracy": v["accuracy"]}
                    record = record or {"step": step, "epoch": round(step / s.steps_per_epoch, 4)}
                    record.update(val)
                    if main:
                        bar.write(f"step {step}: val_loss {v['loss']:.4f} val_accuracy "
                                  f"{100 * v['accuracy']:.2f}%", file=sys.stderr)
                if record is not None:
                    records.append(record)
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                stop_signal = vote(signals.received)
                stopping = stop_signal is not None
                if is_last or stopping or (every is not None and step % every == 0):
                    t0 = time.perf_counter()
                    save(step, val)
                    interval_start += time.perf_counter() - t0  # saving is not training either
                if stopping and not is_last:
                    ckpt.wait()
                    name = signal.Signals(stop_signal).name
                    if signals.received is None:
                        name += " (sent to another process)"
                    raise RunStopped(f"stopped by {name} after step {step}: checkpoint saved in "
                                     f"{ckpt.directory}; run the same command to resume",
                                     exit_code=128 + stop_signal)
        ckpt.wait()
    finally:
        bar.close()
        metrics_file.close()

    final = run_eval(s, state, cfg.data.eval_split)
    checkpoint.save_weights(workdir, state)  # every process: orbax gathers the shards
    step = int(jax.device_get(state.step))
    summary = {
        "name": cfg.name,
        "step": step,
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
        "non_embedding_params": acc.non_embedding_params if acc else None,
        "examples_seen": step * cfg.data.batch_size,
        "tokens_seen": step * cfg.data.batch_size * s.task.tokens_per_example,
        # Analytic training FLOPs (forward + backward matmuls; see scaling/flops.py).
        "flops_per_example": acc.model_flops_per_example if acc else None,
        "flops": acc.model_flops_per_example * step * cfg.data.batch_size if acc else None,
        **_utilisation(acc, peak, ls.timed_examples, ls.train_time, n_devices),
        "peak_flops_per_device": peak.flops_per_s if peak else None,
        "peak_source": peak.name if peak else None,
        "skipped_updates": ls.skipped,
        "resumed_from": ls.resumed_from,
        # Summed over every session of a resumed run.
        "wall_time_s": ls.wall_time + time.perf_counter() - t_start,
        "compile_time_s": ls.compile_time,
        "eval_time_s": ls.eval_time,
        # Training throughput of timed steps (each session's first, compiling, step is not),
        # evaluation and checkpointing excluded.
        "examples_per_sec": ls.timed_examples / ls.train_time if ls.train_time > 0 else None,
        "tokens_per_sec": (ls.timed_examples * s.task.tokens_per_example / ls.train_time
                           if ls.train_time > 0 and s.task.tokens_per_example > 1 else None),
        "compilations": {"train_step": _cache_size(s.train_step),
                         "eval_step": _cache_size(s.eval_step)},
        "devices": [str(d) for d in s.mesh.devices.flat],
        "parallel": s.parallel.as_dict(),
        "jax_version": jax.__version__,
    }
    if not main:
        return summary
    _write_json(workdir / "summary.json", summary)
    if step > start_step:
        # One row in <workdir>/../results.jsonl per run that trained; relaunching a finished
        # run only re-evaluates it, and a second row would count it twice in a fit.
        results.record(cfg, summary, workdir)
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
