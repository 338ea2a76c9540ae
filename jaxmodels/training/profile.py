"""`train.profile_steps="START:END"`: a jax.profiler trace of training steps START..END
(inclusive, 1-based like the loop's step numbers) into WORKDIR/profile.

The state is blocked on before the trace starts and after step END, so the trace holds those
steps' device work and nothing of the compile or of the steps around them (keep START after the
first step to leave the compile out). Only the main process traces (multi-host: process 0, whose
trace shows the collectives it waits in). Open it with `tensorboard --logdir WORKDIR` (profile
tab, needs the tensorboard-plugin-profile / xprof package), `xprof WORKDIR/profile`, or, with
`perfetto=True` (train.profile_perfetto), ui.perfetto.dev on the .trace.json.gz it also writes.
Each traced step's dispatch is marked with `jax.profiler.StepTraceAnnotation("train",
step_num=STEP)`: the profile tab's step-time view and the trace viewer group the work by step.
Tracing changes no computed value: the steps run the same compiled programs.
"""

from __future__ import annotations

import contextlib
import pathlib

import jax

from jaxmodels import config as config_lib
from jaxmodels.errors import UserError

FOLDER = "profile"


def check(text: str | None, total_steps: int) -> tuple[int, int] | None:
    """(START, END) of train.profile_steps (None: no profile), END within the run's steps; the
    format itself was checked with the config (config.profile_range)."""
    if text is None:
        return None
    try:
        start, end = config_lib.profile_range(text)
    except ValueError as e:
        raise UserError(f"train.profile_steps={text!r}: {e}") from None
    if end > total_steps:
        raise UserError(f"train.profile_steps={text!r}: the run has only {total_steps} steps: "
                        f"pass an END of at most {total_steps}")
    return start, end


class Profiler:
    """Starts the trace before step START and stops it after step END (or at the loop's end)."""

    def __init__(self, steps: tuple[int, int] | None, workdir: pathlib.Path, main: bool,
                 perfetto: bool = False):
        self.steps = steps if main else None
        self.directory = pathlib.Path(workdir) / FOLDER
        self.perfetto = perfetto
        self.active = False

    def before(self, step: int, state) -> None:
        """Called before step `step` is dispatched, with the state it will take."""
        if self.steps is None:
            return
        start, end = self.steps
        if not self.active and start <= step <= end:  # a resumed run starts mid-range
            jax.block_until_ready(state)
            jax.profiler.start_trace(str(self.directory), create_perfetto_trace=self.perfetto)
            self.active = True
        elif self.active and step > end:
            self.stop(state)

    def step(self, step: int):
        """A context for dispatching step `step`: its trace annotation while tracing, else none."""
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def stop(self, state) -> None:
        """Ends a trace in progress (state None: the loop failed, nothing to wait for)."""
        if self.active:
            if state is not None:
                jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            self.steps = None
