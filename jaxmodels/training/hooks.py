"""Hooks: user code the loop calls at its log, eval and checkpoint points, outside jit.

A hook is any object with some of these methods (all optional; `Hook` is a base with no-ops):

  start(context)                    once per session, before the first step: a `Context` with
                                    the workdir, model, config and the records already logged
                                    (a resumed run's earlier lines).
  on_log(step, record, state)       after each metrics.jsonl line is written; `record` is that
                                    line as a dict (train means at log steps, val_* at eval
                                    steps, both when they coincide).
  on_eval(step, metrics, state)     after each periodic validation: {"val_loss": ..., ...}, named
                                    after the objective's metrics.
  on_checkpoint(step, state)        after a checkpoint of `step` was started.
  state_dict() / load_state_dict(d) a JSON-able state saved in every checkpoint (EarlyStopping's
                                    counters), so a resumed run decides as an uninterrupted one.

A plain function `fn(step, record)` is an on_log hook. on_log and on_eval may return
`Stop("why")` to end the run: the loop checkpoints that step, evaluates, and the summary says
`"stopped": {"step", "reason"}`; relaunching the stopped run trains no further.

Read-only: `state` is the TrainState after the step, read-only by contract. Its buffers are
donated to (reused by) the next train step, so a hook that keeps anything takes a host copy
(`jax.device_get`) now; a hook can never change what the next step computes, which is what keeps
exact resume. A hook that raises ends the run with a one-line UserError naming the hook and the
step; the checkpoints already saved are intact and relaunching resumes from the last.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxmodels.errors import UserError


class Stop(NamedTuple):
    """Returned by a hook to ask the loop to stop after this step."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Context:
    """What a hook may need besides the step: given once to `start`."""

    workdir: pathlib.Path
    model: Any  # jaxmodels.Model
    config: Any  # the resolved Config
    records: tuple  # metrics.jsonl records written before this session (resumed runs)
    main: bool  # the process that writes files (multi-host: process 0)


class Hook:
    """A hook with no-op methods: subclass and override the ones you need."""

    def start(self, context: Context) -> None:
        pass

    def on_log(self, step: int, record: dict, state) -> Stop | None:
        return None

    def on_eval(self, step: int, metrics: dict, state) -> Stop | None:
        return None

    def on_checkpoint(self, step: int, state) -> None:
        return None


class _LogFunction(Hook):
    def __init__(self, fn):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def on_log(self, step, record, state):
        return self.fn(step, record)


EVENTS = ("start", "on_log", "on_eval", "on_checkpoint")


def as_hook(obj):
    if any(callable(getattr(obj, e, None)) for e in EVENTS):
        return obj
    if callable(obj):
        return _LogFunction(obj)
    raise UserError(f"hook {obj!r} has none of {', '.join(EVENTS)} and is not callable: subclass "
                    f"jaxmodels.training.hooks.Hook or pass a function fn(step, record)")


def hook_name(hook) -> str:
    return getattr(hook, "name", None) or type(hook).__name__


class Hooks:
    """The loop's side of the hooks: calls them, turns their failures into one-line errors,
    and keeps their state in the LoopState `ls` (key: position and class name)."""

    def __init__(self, hooks: Sequence, ls):
        self.hooks = [as_hook(h) for h in hooks]
        self.ls = ls
        self.where = lambda: "no checkpoint was saved"  # the loop sets where it can resume
        for key, h in zip(self._keys(), self.hooks):
            if key in ls.hooks and callable(getattr(h, "load_state_dict", None)):
                h.load_state_dict(ls.hooks[key])

    def _keys(self) -> list[str]:
        return [f"{i}:{type(h).__name__}" for i, h in enumerate(self.hooks)]

    def call(self, event: str, step: int, *args) -> Stop | None:
        """Calls `event` on every hook (all of them, even after one asked to stop); the first
        Stop returned."""
        stop = None
        for h in self.hooks:
            method = getattr(h, event, None)
            if not callable(method):
                continue
            try:
                result = method(*args) if event == "start" else method(step, *args)
            except Exception as e:  # noqa: BLE001 - a user's hook failing is one line
                detail = str(e).splitlines()[0] if str(e) else ""
                raise UserError(f"hook {hook_name(h)} failed in {event} at step {step}: "
                                f"{type(e).__name__}: {detail}; {self.where()}") from e
            if isinstance(result, Stop) and stop is None:
                stop = result
        return stop

    def save_into(self, ls) -> None:
        """Each stateful hook's state into `ls.hooks`, before a checkpoint is written."""
        ls.hooks = {key: h.state_dict() for key, h in zip(self._keys(), self.hooks)
                    if callable(getattr(h, "state_dict", None))}


class EarlyStopping(Hook):
    """Stops when `monitor` (a metrics.jsonl key, e.g. "val_loss") has not improved by more
    than `min_delta` for `patience` consecutive records that carry it. `mode`: "min" or "max"."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, mode: str = "min",
                 min_delta: float = 0.0):
        if mode not in ("min", "max"):
            raise UserError(f"EarlyStopping(mode={mode!r}): use mode='min' or mode='max'")
        if not (isinstance(patience, int) and patience >= 1):
            raise UserError(f"EarlyStopping(patience={patience!r}): use an integer >= 1")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise UserError(f"EarlyStopping(min_delta={min_delta!r}): use a number >= 0")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad = 0

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_log(self, step, record, state):
        if self.monitor not in record:
            return None
        value = float(record[self.monitor])
        if self._improved(value):
            self.best, self.best_step, self.bad = value, step, 0
            return None
        self.bad += 1
        if self.bad >= self.patience:
            best = "none finite" if self.best is None else f"best {self.best:.6g} at step {self.best_step}"
            return Stop(f"early stopping: {self.monitor} did not improve for {self.bad} "
                        f"evaluations ({best})")
        return None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.best_step, self.bad = d["best"], d["best_step"], d["bad"]


class CSVLogger(Hook):
    """Writes every metrics.jsonl record to a CSV file at `path` (relative to the workdir
    unless absolute). Rewritten whole at each record, so its columns are every key seen so far
    and a resumed run's file matches an uninterrupted one's."""

    def __init__(self, path: str | pathlib.Path = "metrics.csv"):
        self.path = pathlib.Path(path)
        self.rows: list[dict] = []
        self.main = True

    def start(self, context):
        if not self.path.is_absolute():
            self.path = context.workdir / self.path
        self.rows, self.main = [dict(r) for r in context.records], context.main

    def on_log(self, step, record, state):
        self.rows.append(dict(record))
        if not self.main:
            return None
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)
        return None


class SavePredictions(Hook):
    """The model's outputs (evaluation mode) for `inputs` at eval points, every `every` steps
    (None: at each eval), as <workdir>/<folder>/step_<step>.npy."""

    def __init__(self, inputs, every: int | None = None, folder: str = "predictions"):
        self.inputs, self.every, self.folder = np.asarray(inputs), every, folder
        self._predict = None

    def start(self, context):
        from jaxmodels.training import step as step_lib  # the step module imports no hooks

        self.directory = context.workdir / self.folder
        self.main = context.main
        if self.main:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._predict = jax.jit(step_lib.make_predict(context.model))

    def on_eval(self, step, metrics, state):
        if self.every is not None and step % self.every:
            return None
        outputs = jax.device_get(self._predict(state, self.inputs))
        if self.main:
            np.save(self.directory / f"step_{step}.npy", np.asarray(outputs))
        return None
