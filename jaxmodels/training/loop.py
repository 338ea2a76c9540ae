"""The training loop: `train(config, workdir) -> summary` and `evaluate(config, workdir)`.

The loop is plain Python around two jitted pure functions. It owns the I/O the steps must not do:
batches in, metrics out (one step late, so dispatch stays asynchronous), files in the workdir.
`_train` only strings together named pieces, each in its own file (packed sweeps reuse them):
  periodic.py        what is due at a step (log, validation, checkpoint; epoch boundaries)
  metrics_log.py     pending device metrics, interval means, the non-finite check, metrics.jsonl
  throughput.py      compile time, timed intervals, examples/tokens per second, MFU/HFU
  evaluator.py       periodic and final evaluation, named after the objective's metrics
  run_checkpoint.py  LoopState, resume and save of (TrainState, LoopState)
  summary.py         summary.json
  hooks.py           user code at log, eval and checkpoint points (`train(..., hooks=...)`)

Files written to WORKDIR:
  config.json     the resolved config
  metrics.jsonl   one JSON object per logged step (train means over the interval; val_* when
                  validation ran at that step)
  checkpoints/    whole-run checkpoints (see checkpoint.py): a launch into a workdir that holds one
                  resumes from it, and ends bitwise where an uninterrupted run would have
  summary.json    final numbers; eval_* are measured on the config's held-out split
  curves.png      learning curves
  weights/        final params and model collections (orbax), read by `jaxmodels eval`
  tensorboard/    TensorBoard events of metrics.jsonl, curves, config, hparams (tensorboard.py)
  profile/        a jax.profiler trace of train.profile_steps, when set (profile.py)

SIGTERM or SIGINT during training finishes the current step, saves a checkpoint at it, and stops
with `RunStopped` (with several processes, all of them one step later, whichever received it:
parallel/stop_vote.py). Outside the step loop (start-up, the final evaluation, the weights) a
signal stops the run at the next phase boundary, again on every process; a non-finite loss or
gradient norm under train.nonfinite=stop stops without saving anything after the last good
checkpoint.
"""

from __future__ import annotations

import contextlib
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
# tqdm.auto: a widget inside Jupyter and Colab (one updating bar, not a stream of \r chunks),
# the plain text bar everywhere else, so the command line's output is unchanged.
import tqdm.auto

from jaxmodels import config as config_lib
from jaxmodels import data as data_lib
from jaxmodels.data import prefetch
from jaxmodels import files
from jaxmodels import models
from jaxmodels.config import Config
from jaxmodels.errors import RunStopped, UserError
from jaxmodels.parallel import distributed
from jaxmodels.parallel import mesh as mesh_lib
from jaxmodels.parallel import rules as rules_lib
from jaxmodels.parallel import sharding as sharding_lib
from jaxmodels.parallel import stop_vote
from jaxmodels.training import init_from
# Accounting and bookkeeping only (device peaks, the results table): accounting/ imports no
# training code, so this does not turn the cli -> scaling -> training direction around.
from jaxmodels.accounting import hardware, results
from jaxmodels.models.interface import as_model
from jaxmodels.training import checkpoint, mup, optim, plots, tasks
from jaxmodels.training import plan as plan_lib
from jaxmodels.training import hooks as hooks_lib
from jaxmodels.training import objectives as objectives_lib
from jaxmodels.training import packed_metrics
from jaxmodels.training import step as step_lib
from jaxmodels.training import profile as profile_lib
from jaxmodels.training import summary as summary_lib
from jaxmodels.training import tensorboard
from jaxmodels.training import workdir as workdir_lib
from jaxmodels.training.evaluator import Evaluator, describe
from jaxmodels.training.metrics_log import MetricsLog
from jaxmodels.training.periodic import Periodic
# LoopState and abstract_state are part of this module's API (resume, tests): re-exported.
from jaxmodels.training.run_checkpoint import LoopState, RunCheckpoint, abstract_state  # noqa: F401
from jaxmodels.training.state import TrainState, abstract_variables, count_params, init_state
from jaxmodels.training.throughput import Throughput, flops_for


@dataclasses.dataclass(frozen=True)
class Parts:
    """What a run trains when given in Python rather than named by the config (`jaxmodels.fit`
    and scripts): each part left None comes from the config, through the same registries."""

    model: Any = None  # anything jaxmodels.as_model accepts
    data: Any = None  # a DataSource (jaxmodels/data/source.py)
    objective: Any = None  # an Objective, a loss function or a registered name
    optimizer: Any = None  # an optax.GradientTransformation (its own schedule included)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What both training and evaluation derive from a config: task, model, jitted functions."""

    config: Config  # resolved: model fields the task decides (vocabulary size) are filled in
    task: Any  # the DataSource
    model: Any  # jaxmodels.Model
    objective: Any  # objectives.Objective
    total_steps: int
    steps_per_epoch: float
    mesh: Any
    state_sharding: Any
    batch_sharding: Any
    init_fn: Any  # jitted: () -> TrainState, born with its sharding
    train_step: Any  # jitted, state donated; metrics packed (packed_metrics.py)
    eval_step: Any  # jitted
    parallel: sharding_lib.Report  # mesh, per-device bytes, what could not be split
    # The config's runtime optimizer values (optim.make; empty for a user's optimizer): a resumed
    # state takes these, not the checkpoint's, so an allowed change of learning rate applies.
    hyperparams: dict = dataclasses.field(default_factory=dict)


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


def build_objective(config: Config, given=None):
    o = config.objective
    options = {f.name: getattr(o, f.name) for f in dataclasses.fields(o) if f.name != "name"}
    return objectives_lib.resolve(given if given is not None else o.name, **options)


def check_fit(model, objective, task, name: str) -> None:
    """Traces init and one evaluation step on the data's shapes (nothing is compiled or
    allocated), so a module with the wrong signature or outputs that do not fit the loss are one
    line naming the problem, before anything is created."""
    batch = next(iter(task.eval_batches(task.splits[0], periodic=True)))
    example = jnp.asarray(task.example_inputs)
    try:
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), example))
    except Exception as e:  # noqa: BLE001 - a user's module failing is one line, not a traceback
        raise UserError(f"{name}: initialising the model on inputs of shape {example.shape} failed: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    variables = nn.meta.unbox(variables)
    try:
        outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)[0], variables,
                                 jnp.asarray(batch["inputs"]))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{name}: applying the model to inputs of shape {batch['inputs'].shape} "
                        f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    try:
        jax.eval_shape(lambda o, t, m: step_lib.objective_sums(objective, o, t, m), outputs,
                       jnp.asarray(batch["targets"]), jnp.asarray(batch["mask"]))
    except Exception as e:  # noqa: BLE001
        shapes = jax.tree.map(lambda x: tuple(x.shape), outputs)
        raise UserError(f"{name}: the model's outputs {shapes} do not fit the {objective.name} "
                        f"objective with targets {batch['targets'].shape} "
                        f"({batch['targets'].dtype}): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                        ) from None


def setup(config: Config, parts: Parts | None = None) -> Setup:
    parts = parts or Parts()
    # Mesh mistakes are cheap to find: report them before loading data or compiling anything.
    mesh = mesh_lib.make_mesh(config.parallel)
    mesh_lib.check_batch_size(config.data.batch_size, mesh)
    if parts.data is not None:
        task = data_lib.check_source(parts.data, "the data source")
        tasks.check_source_fits(task, config.data)
    else:
        task = tasks.build(config.data)
    config = dataclasses.replace(config, model=tasks.resolve_model(config.model, task))
    steps_per_epoch = task.train_size / config.data.batch_size
    steps = total_steps(config.train, steps_per_epoch)

    opt = config.optimizer
    if parts.optimizer is None:
        check_warmup(opt, steps)
    model = as_model(parts.model if parts.model is not None else models.build(config.model))
    objective = build_objective(config, parts.objective)
    check_fit(model, objective, task, config.name)
    example = jnp.asarray(task.example_inputs)
    if parts.optimizer is None:
        multipliers = mup.lr_multipliers(config.model, opt.name, model, example)
        tx, schedule = optim.make(config.optimizer, steps, lr_multipliers=multipliers)
    else:
        tx, schedule = parts.optimizer, None

    t = config.train
    c = compile_steps(model, tx, schedule, example, config.parallel, mesh, seed=t.seed,
                      microbatches=t.microbatches, nonfinite=t.nonfinite,
                      spike_sigma=t.spike_sigma, spike_window=t.spike_window, objective=objective)
    return Setup(config, task, model, objective, steps, steps_per_epoch, mesh, c.state_sharding,
                 c.batch_sharding, c.init_fn, c.train_step, c.eval_step, c.report,
                 dict(getattr(schedule, "hyperparams", None) or {}))


@dataclasses.dataclass(frozen=True)
class Compiled:
    state_sharding: Any  # TrainState-shaped tree of NamedShardings
    batch_sharding: Any
    init_fn: Any  # jitted: () -> TrainState, born sharded
    train_step: Any  # jitted, state donated; metrics packed (packed_metrics.py)
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
                  spike_sigma: float | None = None, spike_window: int = 100,
                  objective=None) -> Compiled:
    """Shardings from the rules table and the jitted init/train/eval over `mesh` (importable, so
    tests compare any mesh with a one-device one)."""
    # The seed and the optimizer's runtime hyper-parameters (optim.make) are arguments of the
    # compiled init, not constants, so runs that differ only in them share one program (and its
    # persistent-cache entry); a seed outside int32 stays a constant.
    traced_seed = -2**31 <= seed < 2**31
    hyper = dict(getattr(schedule, "hyperparams", None) or {})

    def init_of(seed_value, hyper_values):
        state = init_state(model, tx, example, seed_value if traced_seed else seed)
        if not hyper_values:
            return state
        return state.replace(opt_state=optim.with_hyperparams(state.opt_state, **hyper_values))

    init_args = (np.int32(seed if traced_seed else 0),
                 {k: np.float32(v) for k, v in hyper.items()})
    init = functools.partial(init_of, *init_args)
    # Shardings are derived from shapes and logical names alone, before any parameter exists.
    state_sharding, report = sharding_lib.state_shardings(
        jax.eval_shape(init), abstract_variables(model, example)["params"], mesh,
        parallel.preset, threshold_bytes=parallel.replication_threshold_bytes,
        strict=parallel.strict)
    batch_sharding = mesh_lib.batch_sharding(mesh)
    replicated = mesh_lib.replicated(mesh)
    # The state is created inside jit with its output sharding, so it is born where it lives.
    init_fn = functools.partial(jax.jit(init_of, out_shardings=state_sharding), *init_args)
    train_step = jax.jit(
        _under_activation_rules(
            # Metrics stacked into one array: one fetch per step instead of one per metric.
            packed_metrics.packing(step_lib.make_train_step(
                model, tx, objective, schedule=schedule, microbatches=microbatches,
                nonfinite=nonfinite, spike_sigma=spike_sigma, spike_window=spike_window)), mesh,
            parallel.preset),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    eval_step = jax.jit(_under_activation_rules(step_lib.make_eval_step(model, objective), mesh,
                                                parallel.preset),
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
    """The objective's loss and metrics over `split` (every example or token; the last batch
    padded and masked): {"loss": ..., metric: ..., "examples": count}. `periodic` lets a task
    read a fixed subset during training (text)."""
    dp = mesh_lib.data_parallel_size(s.mesh)
    # Summed on the host in float64 (distributed.sum_on_host says why: an eager add of global
    # arrays deadlocked multi-host runs).
    totals = distributed.sum_on_host(
        s.eval_step(state, distributed.put_batch(_pad_batch(batch, dp), s.batch_sharding))
        for batch in s.task.eval_batches(split, periodic=periodic))
    return mean_metrics({name: (total, float(count)) for name, (total, count) in totals.items()})


def mean_metrics(totals: dict) -> dict:
    """{name: sum / count} (lists for vector metrics) plus "examples", the loss's count."""
    out = {}
    for name, (total, count) in totals.items():
        value = np.asarray(total) / max(count, 1.0)
        out[name] = float(value) if value.ndim == 0 else value.tolist()
    out["examples"] = int(totals["loss"][1]) if "loss" in totals else 0
    return out


def _prepare_workdir(workdir: pathlib.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"workdir {str(workdir)!r} is not writable ({e.strerror}): pass --workdir with a folder you can write to") from None


def _write_json(path: pathlib.Path, obj) -> None:
    files.write_atomic(path, json.dumps(obj, indent=2) + "\n")


class _SignalFlag:
    """Records SIGTERM/SIGINT instead of dying mid-step; the loop stops at the next step boundary.
    A second SIGINT interrupts at once; a repeated SIGTERM changes nothing. Handlers exist while `train` runs (start-up, the steps,
    the final evaluation, weights and summary), and only in the main thread (Python allows
    handlers nowhere else). Re-entrant: an inner `with` of the same flag changes nothing.

    `vote` (a StopVote over the run's mesh, once there is one) makes every process of a
    multi-process run act on a signal any of them received: between steps (the loop's pipelined
    vote) and at each boundary outside the step loop (`stop_if_received`, a blocking vote), so
    none of them stops alone and leaves the others waiting in the next collective."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self.vote: stop_vote.StopVote | None = None
        self._previous = {}
        self._depth = 0

    def stop_if_received(self, where: str, step: int | None, directory, *,
                         every_process: bool = True) -> None:
        """RunStopped (exit 128 + signal) when a signal came in outside the step loop: at
        start-up nothing was trained; in the final phase the last checkpoint is complete and a
        relaunch only finishes the run (evaluation, weights, summary, results row).
        `every_process`: all processes call this here, in the same order, so they vote (a
        point only process 0 reaches, after the others returned, decides alone)."""
        agreed = (self.vote.now(self.received) if every_process and self.vote is not None
                  else self.received)
        if agreed is None:
            return
        name = signal.Signals(agreed).name
        if self.received is None:
            name += " (sent to another process)"
        done = (f"the checkpoint of step {step} in {directory} is complete" if step
                else "nothing was trained or changed")
        raise RunStopped(f"stopped by {name} {where}: {done}; run the same command to "
                         f"{'finish' if step else 'start'}", exit_code=128 + agreed)

    def _handle(self, signum, frame):
        del frame
        # A second SIGINT is a user pressing Ctrl-C again: stop at once. A repeated SIGTERM
        # only says again what the first one said, and it does come twice (a process group and
        # a direct kill, a scheduler's notice and its retry, a sweep worker's parent-death
        # signal racing the forwarded one); stopping at once would throw away the checkpoint
        # being saved, so it is ignored.
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = signum

    def __enter__(self):
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
            self._previous = {}


def train(config: Config, workdir: str | os.PathLike, *, restart: bool = False,
          parts: Parts | None = None, hooks=()) -> dict:
    """Trains `config` into `workdir`, continuing from the newest checkpoint there unless
    `restart`; returns the summary dict (also summary.json). `parts` supplies a model, data
    source, objective or optimizer in Python instead of through the config's registries. `hooks`:
    objects called at log, eval and checkpoint points (training/hooks.py)."""
    workdir = pathlib.Path(workdir)
    hooks = tuple(hooks_lib.as_hook(h) for h in hooks)  # a bad hook is one line, before any work
    # With several processes (multi-host) process 0 writes every file; the others compute.
    main = distributed.is_main()
    t_start = time.perf_counter()
    signals = _SignalFlag()
    with signals:  # from start-up to the summary, a signal ends the run with its one line
        s = setup(config, parts)  # every config and data problem surfaces here, before any file changes
        plan_lib.check_fits(s)  # a step that cannot fit is one line, before any batch or compile
        signals.vote = stop_vote.StopVote(s.mesh)
        signals.stop_if_received("during start-up", None, None)
        if main:  # [rel] after setup: a missing dataset leaves no empty workdir behind
            _prepare_workdir(workdir)
        cfg = s.config
        log = sys.stderr if main else io.StringIO()
        # [rel] one process per workdir, held until return (see workdir.py)
        with workdir_lib.locked(workdir) if main else contextlib.nullcontext():
            if restart and main:
                removed = checkpoint.remove_checkpoints(workdir)
                if removed:
                    print(f"{cfg.name}: --restart: removed the checkpoints of steps {removed}", file=log)
            ckpt = checkpoint.Checkpoints(workdir, cfg.checkpoint)
            try:
                return _train(s, ckpt, workdir, main, log, t_start, hooks, signals)
            finally:
                ckpt.close()


def _announce(s: Setup, n_params: int, fresh: bool, log) -> None:
    cfg = s.config
    if fresh:
        print(f"{cfg.name}: {s.model.name} with {n_params:,} parameters on "
              f"{s.task.describe()}; "
              f"{s.total_steps:,} steps of batch {cfg.data.batch_size} "
              f"({s.total_steps / s.steps_per_epoch:.2f} epochs) on {s.mesh.devices.size} "
              f"{jax.devices()[0].platform} device(s) in {jax.process_count()} process(es)", file=log)
    # How this process compiles (runtime.py): whether a compile is kept for the next launch.
    from jaxmodels import runtime

    print(f"{cfg.name}: {s.parallel.describe()}; {runtime.describe()}", file=log)


def _batch_shapes(s: Setup) -> dict:
    """A train batch as shapes placed like the loop's (for XLA's FLOP count; nothing runs)."""
    batch = next(s.task.train_batches(s.config.train.seed))
    return {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=s.batch_sharding)
            for k, v in batch.items()}


@dataclasses.dataclass
class _Session:
    """The pieces one launch of a run strings together (see the module docstring)."""

    run: RunCheckpoint
    state: TrainState
    ls: LoopState
    batches: Any
    start_step: int
    n_params: int
    meter: Throughput
    mlog: MetricsLog
    when: Periodic
    evaluator: Evaluator
    hooks: hooks_lib.Hooks


def _session(s: Setup, ckpt, workdir: pathlib.Path, main: bool, log, t_start: float,
             hooks: tuple) -> _Session:
    """Resumes (or starts) the run and builds its pieces; writes config.json and the data's
    files."""
    cfg = s.config
    run = RunCheckpoint(ckpt, s, workdir, log, t_start)
    resumed = run.resume()
    state, ls, records = (init_from.fresh_state(s), LoopState(), []) if resumed is None else resumed
    batches = distributed.train_stream(s.task, cfg.train.seed, s.batch_sharding, cfg.data.batch_size)
    if ls.data is not None:
        batches.set_state(ls.data)
    if main:
        # Rewritten by every launch, also of a run that has checkpoints: atomic, since a torn
        # config.json makes `sweep` take the run for another config and `sample` fail.
        files.write_atomic(workdir / "config.json", config_lib.to_json(cfg) + "\n")
        s.task.save(workdir)
    n_params = count_params(state.params)
    _announce(s, n_params, resumed is None, log)
    flops = flops_for(s, n_params, state, lambda: _batch_shapes(s), log)
    meter = Throughput(ls, batch_size=cfg.data.batch_size, tokens_per_example=s.task.tokens_per_example,
                       n_devices=s.mesh.devices.size, flops=flops,
                       peak=hardware.peak_flops(s.mesh.devices.flat[0]) if flops else None)
    mlog = MetricsLog(ls, records, workdir / "metrics.jsonl" if main else None,
                      guarded=cfg.train.nonfinite == "skip" or cfg.train.spike_sigma is not None,
                      events=tensorboard.open_log(cfg.train.tensorboard, workdir, records) if main else None)
    evaluator = Evaluator(lambda st, split, periodic: run_eval(s, st, split, periodic=periodic),
                          cfg.data.eval_split, meter=meter)
    hk = hooks_lib.Hooks(hooks, ls)
    # A failing hook's message names the checkpoint to resume from: the one in flight counts.
    hk.where = lambda: (ckpt.wait(), run.where())[1]
    start_step = int(jax.device_get(state.step))
    hk.call("start", start_step, hooks_lib.Context(workdir, s.model, cfg, tuple(records), main))
    return _Session(run, state, ls, batches, start_step, n_params, meter, mlog,
                    Periodic.from_config(cfg, s.total_steps, s.steps_per_epoch), evaluator, hk)


def _train(s: Setup, ckpt: checkpoint.Checkpoints, workdir: pathlib.Path, main: bool, log,
           t_start: float, hooks: tuple = (), signals: _SignalFlag | None = None) -> dict:
    cfg = s.config
    signals = signals or _SignalFlag()
    if signals.vote is None:
        signals.vote = stop_vote.StopVote(s.mesh)
    # A bad range is one line here, before the session compiles anything.
    profiler = profile_lib.Profiler(profile_lib.check(cfg.train.profile_steps, s.total_steps),
                                    workdir, main, cfg.train.profile_perfetto)
    se = _session(s, ckpt, workdir, main, log, t_start, hooks)
    signals.stop_if_received("during start-up", None, ckpt.directory)
    state, ls, start_step = se.state, se.ls, se.start_step
    meter, mlog, when, evaluator, hk = se.meter, se.mlog, se.when, se.evaluator, se.hooks

    def check_finite() -> None:
        bad = mlog.nonfinite() if cfg.train.nonfinite == "stop" else None
        if bad is not None:
            raise se.run.nonfinite_stop(bad)

    def save(step: int, val: dict | None) -> None:
        check_finite()  # never checkpoint a state that went non-finite
        hk.save_into(ls)
        se.run.save(step, state, ls, se.batches, mlog.fetch(), val)

    # A run a hook stopped stays stopped: relaunching it only evaluates.
    last = start_step if ls.stopped else s.total_steps
    bar = tqdm.auto.tqdm(total=s.total_steps, initial=start_step,
                         disable=not (cfg.train.progress and main), unit="step",
                         dynamic_ncols=True, file=sys.stderr)
    # The next batches are read and placed while a step runs; checkpoints record the consumed ones.
    se.batches = batches = prefetch.Prefetch(
        se.batches, lambda b: distributed.put_batch(b, s.batch_sharding), cfg.data.prefetch,
        place_in_thread=jax.process_count() == 1)  # global arrays: on the dispatching thread
    try:
        with signals:
            vote = signals.vote  # every process stops at the same step
            for step in range(start_step + 1, last + 1):
                profiler.before(step, state)
                with profiler.step(step):
                    state, metrics = s.train_step(state, next(batches))
                mlog.add(step, metrics)
                meter.stepped(step == start_step + 1, metrics)
                bar.update(1)
                record, val, stop = None, None, None
                if when.log_due(step):
                    check_finite()
                    record = {**mlog.interval(step, when.epoch(step)), **meter.interval()}
                    bar.set_postfix(loss=f"{record['loss']:.4f}", ex_s=f"{record['examples_per_sec']:,.0f}")
                if when.eval_due(step):
                    val = evaluator.periodic(state)
                    record = {**(record or {"step": step, "epoch": when.epoch(step)}), **val}
                    if main:
                        bar.write(f"step {step}: {describe(val)}", file=sys.stderr)
                    stop = hk.call("on_eval", step, dict(val), state)
                if record is not None:
                    mlog.write(record)
                    stop = hk.call("on_log", step, dict(record), state) or stop
                if stop is not None:
                    ls.stopped = {"step": step, "reason": stop.reason}
                    print(f"{cfg.name}: stopped after step {step}: {stop.reason}", file=log)
                stop_signal = vote(signals.received)  # once per step, on every process
                stopping = stop_signal is not None
                if when.save_due(step) or stopping or stop is not None:
                    with meter.pause():  # saving is not training either
                        save(step, val)
                    hk.call("on_checkpoint", step, state)
                if stop is not None:
                    break
                if stopping and not when.is_last(step):
                    ckpt.wait()
                    name = signal.Signals(stop_signal).name
                    if signals.received is None:
                        name += " (sent to another process)"
                    raise RunStopped(f"stopped by {name} after step {step}: checkpoint saved in "
                                     f"{ckpt.directory}; run the same command to resume",
                                     exit_code=128 + stop_signal)
        profiler.stop(state)
        ckpt.wait()
    finally:
        profiler.stop(None)
        batches.close()
        bar.close()
        mlog.close()
    with signals:
        return _finish(s, state, evaluator, mlog, meter, ls, se.n_params, start_step, workdir,
                       main, t_start, signals, ckpt.directory)


def _finish(s: Setup, state, evaluator, mlog, meter, ls, n_params, start_step, workdir, main,
            t_start, signals: _SignalFlag, directory) -> dict:
    """Final evaluation, weights, summary.json, the results row and the curves. A signal in
    between stops after the phase in flight with one line (every process of a multi-process
    run, whichever received it: they vote after the evaluation and after the weights, which
    all of them run); every phase is redone by the relaunch, which resumes from the final
    checkpoint and trains nothing."""
    cfg = s.config
    step = int(jax.device_get(state.step))
    final = evaluator.final(state)
    signals.stop_if_received("during the final evaluation", step, directory)
    checkpoint.save_weights(workdir, state)  # every process: orbax gathers the shards
    signals.stop_if_received("while writing the weights", step, directory)
    summary = summary_lib.build(s, step=step, log=mlog, final=final, meter=meter, ls=ls,
                                n_params=n_params, wall_time=ls.wall_time + time.perf_counter() - t_start)
    if not main:
        return summary
    _write_json(workdir / "summary.json", summary)
    signals.stop_if_received("after writing summary.json", step, directory, every_process=False)
    # [rel] every launch that completes the run: record() adds the row only if it is missing
    results.record(cfg, summary, workdir)
    plots.learning_curves(mlog.records, workdir / "curves.png",
                          title=f"{cfg.name} ({type(s.model).__name__})",
                          loss_label=s.objective.loss_label)
    if cfg.train.tensorboard:
        tensorboard.write_final(workdir, cfg, summary)
    print(f"{cfg.name}: {cfg.data.eval_split} {describe(final)} "
          f"({final['examples']:,} examples{summary_lib.coverage(summary)}) after {summary['step']:,} "
          f"steps in {summary['wall_time_s']:.1f} s; {summary['examples_per_sec'] or 0:,.0f} train examples/s",
          file=sys.stderr)
    return summary


def evaluate(config: Config, workdir: str | os.PathLike, split: str | None = None, *,
             parts: Parts | None = None) -> dict:
    """Evaluates the weights saved in `workdir` on `split` (default: the config's eval split)."""
    workdir = pathlib.Path(workdir)
    s = setup(config, parts)
    split = split or config.data.eval_split
    if split not in s.task.splits:  # [rel] one line before any compile, not KeyError later
        raise UserError(f"--split {split}: {s.task.name} has no {split} split (it has "
                        f"{', '.join(s.task.splits)}): pass --split validation")
    # [rel] not while a run trains into it (an existing workdir; without one, no weights below)
    with workdir_lib.locked(workdir) if workdir.is_dir() else contextlib.nullcontext():
        # A fresh state gives structure and placement; its weights are then replaced by the saved ones.
        fresh = s.init_fn()
        saved = checkpoint.restore_weights(workdir, {"params": fresh.params, "model_state": fresh.model_state})
        state = jax.device_put(fresh.replace(**saved), s.state_sharding)
        result = run_eval(s, state, split)
        result = {"split": split, **result}
        _write_json(workdir / f"eval_{split}.json", result)
        return result
