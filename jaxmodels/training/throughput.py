"""The throughput meter: how fast the loop trains, with compiling, evaluating and saving kept out.

A session's first step compiles; the meter blocks on it, books its time as compile time and
starts the clock after it (its examples are not timed). `pause()` brackets evaluation and
checkpointing so they leave the training clock. `interval()` closes the timed interval at a log
step: examples (and tokens) per second and, when the FLOPs per example and the device's peak are
known, MFU and HFU (accounting/hardware.py). The totals live in the LoopState, so a resumed run
adds to its earlier sessions' time.
"""

from __future__ import annotations

import contextlib
import time

import jax

from jaxmodels.accounting import hardware


class Throughput:
    """Times the loop's intervals into `ls` (a LoopState: compile_time, train_time, eval_time,
    timed_examples). `flops` is an accounting.flops.Accounting-like object (model_ and
    hardware_flops_per_example) or None; `peak` a hardware.Peak or None."""

    def __init__(self, ls, *, batch_size: int, tokens_per_example: int, n_devices: int,
                 flops=None, peak=None):
        self.ls, self.batch_size, self.tokens = ls, batch_size, tokens_per_example
        self.n_devices, self.flops, self.peak = n_devices, flops, peak
        self._start = time.perf_counter()
        self._examples = 0

    def stepped(self, first: bool, metrics) -> None:
        """After dispatching a step. Only a session's first step blocks (a sync point): it
        measures the compile and restarts the clock."""
        if first:
            jax.block_until_ready(metrics)
            self.ls.compile_time += time.perf_counter() - self._start
            self._start = time.perf_counter()
        else:
            self._examples += self.batch_size

    @contextlib.contextmanager
    def pause(self, book: str | None = None):
        """Time spent inside is not training time; `book="eval_time"` adds it to that total."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            self._start += seconds
            if book is not None:
                setattr(self.ls, book, getattr(self.ls, book) + seconds)

    def interval(self) -> dict:
        """Closes the interval since the last call: its rates for the metrics.jsonl record."""
        elapsed = time.perf_counter() - self._start
        self.ls.train_time += elapsed
        self.ls.timed_examples += self._examples
        out = {"examples_per_sec": self._examples / max(elapsed, 1e-9)}
        util = self.utilisation(self._examples, elapsed)
        if util["mfu"] is not None:
            out["mfu"] = util["mfu"]
            if util["hfu"] != util["mfu"]:  # remat recomputes part of the forward
                out["hfu"] = util["hfu"]
        if self.tokens > 1:
            out["tokens_per_sec"] = out["examples_per_sec"] * self.tokens
        self._examples = 0
        self._start = time.perf_counter()
        return out

    def utilisation(self, examples: int, seconds: float) -> dict:
        """MFU (model FLOPs) and HFU (remat's recomputation included); None where unknown."""
        f, peak = self.flops, self.peak
        if f is None or peak is None or seconds <= 0 or examples <= 0:
            return {"mfu": None, "hfu": None}
        return {"mfu": hardware.mfu(f.model_flops_per_example * examples, seconds, self.n_devices, peak),
                "hfu": hardware.mfu(f.hardware_flops_per_example * examples, seconds, self.n_devices, peak)}

    def totals(self) -> dict:
        """The summary's timing keys, over every session of the run."""
        ls = self.ls
        rate = ls.timed_examples / ls.train_time if ls.train_time > 0 else None
        return {
            **self.utilisation(ls.timed_examples, ls.train_time),
            "peak_flops_per_device": self.peak.flops_per_s if self.peak else None,
            "peak_source": self.peak.name if self.peak else None,
            "compile_time_s": ls.compile_time,
            "eval_time_s": ls.eval_time,
            # Training throughput of timed steps (each session's first, compiling, step is not),
            # evaluation and checkpointing excluded.
            "examples_per_sec": rate,
            "tokens_per_sec": rate * self.tokens if rate is not None and self.tokens > 1 else None,
        }


def xla_flops_per_example(train_step, state, batch, batch_size: int, microbatches: int = 1):
    """XLA's count of the train step (jitted) lowered on `state` and `batch` (arrays or
    ShapeDtypeStructs), per example, as an `accounting.xla_flops.XlaFlops`; None where the
    backend reports no count. The lowered (not yet optimised or partitioned) program is the
    whole global step and lowering compiles nothing, so a run pays no second compile for its
    MFU; accounting/xla_flops.py documents where XLA's count drifts from the analytic one."""
    from jaxmodels.accounting import xla_flops

    try:
        lowered = train_step.lower(state, batch)
    except Exception:  # noqa: BLE001 - a count is optional: never fail a run over it
        return None
    flops, _ = xla_flops.cost_analysis_flops(lowered)
    if not flops:
        return None
    per_example = flops / (batch_size // microbatches)
    return xla_flops.XlaFlops(per_example, per_example * batch_size, 1, 0, None)


def flops_for(s, n_params: int, state, batch_shapes, log):
    """FLOPs per example for the meter: the analytic accounting of `s.config.model` when it
    describes the model actually trained (its parameter count matches), else XLA's count of the
    train step on `batch_shapes()` (called only then). None when neither is known."""
    from jaxmodels.accounting import flops as flops_lib
    from jaxmodels.errors import UserError

    try:
        acc = flops_lib.account(s.config.model, tuple(s.task.example_inputs.shape[1:]))
    except UserError as e:
        acc, why = None, str(e)
    else:
        # A model passed in Python (Parts.model) is not the config's, whatever the config says.
        why = f"the config's model has {acc.params:,} parameters, the trained one {n_params:,}"
        if acc.params == n_params:
            return acc
        acc = None
    xla = xla_flops_per_example(s.train_step, state, batch_shapes(), s.config.data.batch_size,
                                s.config.train.microbatches)
    if xla is None:
        print(f"{s.config.name}: no FLOP accounting, so no MFU ({why})", file=log)
    return xla
