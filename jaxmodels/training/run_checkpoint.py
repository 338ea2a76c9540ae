"""Run checkpointing: the TrainState and the loop's host-side LoopState saved together, and a
launch into a workdir that holds a checkpoint resumed from it (checkpoint.py does the I/O,
resume.py decides which config changes a resume allows)."""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import numpy as np

from jaxmodels import config as config_lib
from jaxmodels.errors import RunStopped, UserError
from jaxmodels.training import checkpoint, optim, resume
from jaxmodels.training.metrics_log import read_records


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
    hooks: dict = dataclasses.field(default_factory=dict)  # each stateful hook's state_dict()
    stopped: dict | None = None  # {"step", "reason"} once a hook stopped the run

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


def abstract_state(init_fn, state_sharding):
    """The train state as shapes, dtypes and target shardings (nothing allocated): what a
    checkpoint restores onto, whatever layout it was saved from."""
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                        jax.eval_shape(init_fn), state_sharding)


class RunCheckpoint:
    """Saves and restores (TrainState, LoopState) for the run of setup `s` in `workdir`;
    `t_start` is this session's start (wall time is summed over sessions)."""

    def __init__(self, ckpt: checkpoint.Checkpoints, s, workdir: pathlib.Path, log, t_start: float):
        self.ckpt, self.s, self.workdir, self.log, self.t_start = ckpt, s, workdir, log, t_start

    def resume(self):
        """(state, LoopState, records) from the newest usable checkpoint, or None for a fresh run."""
        s, ckpt, workdir = self.s, self.ckpt, self.workdir
        steps = ckpt.steps()
        if not steps:
            return None
        current = config_lib.to_dict(s.config)
        saved = ckpt.saved_config(steps[-1])
        if saved is not None:  # checked before touching the state: a mismatch is not corruption
            resume.check_finished(saved, current, workdir, steps[-1], s.total_steps)
            resume.check_resume(saved, current, workdir, steps[-1])
        restored = ckpt.restore_latest(abstract_state(s.init_fn, s.state_sharding), log=self.log)
        if restored is None:
            return None
        allowed = resume.check_resume(restored.config, current, workdir, restored.step)
        if restored.step > s.total_steps:
            raise UserError(f"the checkpoint in {str(workdir)!r} is at step {restored.step}, past this "
                            f"config's {s.total_steps} steps: raise train.steps (or train.epochs), or "
                            f"pass --restart to start over")
        print(f"{s.config.name}: resuming from the checkpoint of step {restored.step} in "
              f"{ckpt.directory}" + (f" with changes: {'; '.join(allowed)}" if allowed else ""),
              file=self.log)
        # Restored arrays may be views of host memory orbax read into (on CPU); the train step
        # donates the state, so hand it buffers XLA allocated itself.
        state = jax.tree.map(lambda x: x.copy(), restored.state)
        if getattr(s, "hyperparams", None):  # this launch's learning rate etc., not the saved ones
            state = state.replace(opt_state=optim.with_hyperparams(state.opt_state, **s.hyperparams))
        loop_state = LoopState.from_json(restored.loop)
        loop_state.resumed_from.append(restored.step)
        return state, loop_state, read_records(workdir / "metrics.jsonl", restored.step)

    def save(self, step: int, state, ls: LoopState, batches, fetched: list,
             val: dict | None) -> None:
        """Starts saving step `step`; `fetched` is the host copy of the pending metrics."""
        loop_json = dataclasses.replace(ls, wall_time=ls.wall_time + time.perf_counter() - self.t_start)
        self.ckpt.save(step, state, loop_json.to_json(batches, fetched),
                       config_lib.to_dict(self.s.config), metrics=val)

    def where(self) -> str:
        """Where a stopped run can be resumed from, for its message."""
        kept = self.ckpt.steps()
        return (f"the last good checkpoint is step {kept[-1]} in {self.ckpt.directory} (relaunching "
                f"resumes there)" if kept else "no checkpoint was saved before it")

    def nonfinite_stop(self, bad) -> RunStopped:
        step, key, value = bad
        return RunStopped(f"non-finite {key} ({value}) at step {step}: stopped; {self.where()}; lower "
                          f"optimizer.learning_rate, set optimizer.grad_clip_norm, or set "
                          f"train.nonfinite=skip to drop such updates", exit_code=3)
