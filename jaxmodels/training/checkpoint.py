"""Checkpoints of whole runs, and the final weights, with orbax-checkpoint.

WORKDIR/checkpoints/<step>/ holds one complete run state, written as three orbax items in one
atomic save (orbax writes into a temporary folder and renames it when every item is on disk, so a
folder named by a bare step number is complete; a half-written one is never listed, and is
removed at the next start):
  state   the TrainState (params, optimizer state, model collections, step, PRNG key, loss stats)
  loop    JSON: the data stream's position, the metrics of the interval not yet logged, skip
          count, timers: what the loop needs to continue exactly where it stopped
  config  JSON: the resolved config the run was started with

WORKDIR/weights/ holds the final params and model collections only, which is what
`jaxmodels eval` and `jaxmodels sample` read.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxmodels.config import CheckpointConfig
from jaxmodels.errors import UserError
from jaxmodels.training.state import TrainState

WEIGHTS_DIR = "weights"
CHECKPOINTS_DIR = "checkpoints"
# Checkpoints that failed to restore are moved here (never deleted), so a later save at the
# same step does not collide with them and a person can still inspect them.
UNREADABLE_DIR = "checkpoints_unreadable"


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    state: TrainState
    loop: dict
    config: dict
    skipped: tuple[str, ...]  # "step N: reason" for each newer checkpoint that could not be read


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


# How the OS says "no room" (also through tensorstore, which reports errno text in a ValueError).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")


def _save_failure(e: BaseException, step: int, directory: pathlib.Path, kept: list[int]) -> UserError:
    text = str(e)
    full = next((t for t in _FULL_TEXTS if t in text), None)
    if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
        full = e.strerror or os.strerror(e.errno)
    if full is not None:
        reason, fix = full, "free disk space or point --workdir at a larger disk"
    else:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
        fix = "check that the workdir's disk is writable"
    kept_text = f"the checkpoints of steps {kept} are intact" if kept else "no earlier checkpoint exists"
    return UserError(f"saving the checkpoint of step {step} into {str(directory)!r} failed "
                     f"({reason}): {fix}; {kept_text}, and relaunching resumes from the newest")


class Checkpoints:
    """The run's checkpoint folder: periodic async saves, retention, restore with fallback.

    Every process of a multi-process run creates one and calls save/restore together (orbax
    writes each process's shards; the JSON items come from process 0).
    """

    def __init__(self, workdir: pathlib.Path, cfg: CheckpointConfig):
        self.directory = (pathlib.Path(workdir) / CHECKPOINTS_DIR).absolute()
        self.cfg = cfg
        # Pre-flight: orbax accepts a path that is a file and only fails at the first save,
        # after the compile and the first interval of training.
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"{str(self.directory)!r} is a file, not a checkpoint folder: move it "
                            f"away or pass another --workdir")
        policies = [ocp.checkpoint_managers.LatestN(cfg.keep)]
        if cfg.keep_every is not None:
            policies.append(ocp.checkpoint_managers.EveryNSteps(cfg.keep_every))
        if cfg.keep_best is not None:
            metric = cfg.keep_best
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[metric], reverse=metric == "val_loss", n=1,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=("state", "loop", "config"))
        except OSError as e:
            raise UserError(f"cannot create the checkpoint folder {str(self.directory)!r} "
                            f"({e.strerror}): pass --workdir with a folder you can write to") from None
        self._in_flight: int | None = None

    def steps(self) -> list[int]:
        """Complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: TrainState, loop: dict, config: dict,
             metrics: dict | None = None) -> None:
        """Starts saving (finishes in the background when async); any error of the previous
        save surfaces here as a one-line UserError."""
        self.wait()
        if self.cfg.async_save:
            # The write continues while training does, and the next step donates (reuses) the
            # state's buffers; on CPU orbax's host copies are views of those very buffers. A
            # device-side copy, freed when the write ends, keeps what is written the saved step.
            state = jax.tree.map(jnp.copy, state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), loop=ocp.args.JsonSave(loop),
                                  config=ocp.args.JsonSave(config))
        try:
            # Only steps with validation carry metrics, which is what keep_best ranks.
            self._manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:  # noqa: BLE001 - orbax raises many types; report them in one line
            raise _save_failure(e, step, self.directory, self.steps()) from None
        self._in_flight = step

    def wait(self) -> None:
        """Blocks until the last save is on disk."""
        if self._in_flight is None:
            return
        step, self._in_flight = self._in_flight, None
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:  # noqa: BLE001
            kept = [s for s in self.steps() if s != step]
            raise _save_failure(e, step, self.directory, kept) from None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def saved_config(self, step: int) -> dict | None:
        """The config JSON saved with `step`, or None when it cannot be read."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
            return dict(out["config"])
        except Exception:  # noqa: BLE001 - an unreadable item is the caller's fallback case
            return None

    def restore_latest(self, abstract_state: TrainState, log=None) -> Restored | None:
        """The newest checkpoint that restores, onto `abstract_state`'s shapes and shardings
        (which may be another mesh than the one it was saved from).

        A checkpoint that fails to read is skipped for the next older one; once an older one
        restores, the unreadable newer ones are moved to UNREADABLE_DIR (never deleted). When
        none restores, nothing is moved (a systematic mismatch, not corruption, is likelier) and
        a UserError lists why. None when there is no checkpoint at all."""
        steps = self.steps()
        if not steps:
            return None
        problems, failed = [], []
        for step in reversed(steps):
            try:
                out = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), loop=ocp.args.JsonRestore(),
                    config=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - truncated files, bad JSON, missing items...
                problems.append(f"step {step}: {_one_line(e)}")
                failed.append(step)
                continue
            for bad, why in zip(failed, problems):
                if jax.process_index() == 0:
                    self._set_aside(bad)
                if log is not None:
                    print(f"checkpoint {why.split(':', 1)[0]} in {self.directory} is unreadable "
                          f"({why.split(': ', 1)[1]}); moved to {UNREADABLE_DIR}/ and resuming from "
                          f"step {step} instead", file=log)
            return Restored(step, out["state"], dict(out["loop"]), dict(out["config"]),
                            tuple(problems))
        raise UserError(f"no checkpoint in {str(self.directory)!r} could be restored "
                        f"({'; '.join(problems)}): launch with the config the run was started "
                        f"with, or pass --restart to start over")

    def _set_aside(self, step: int) -> None:
        target = self.directory.parent / UNREADABLE_DIR
        target.mkdir(exist_ok=True)
        source = self.directory / str(step)
        dest = target / str(step)
        n = 1
        while dest.exists():
            dest, n = target / f"{step}.{n}", n + 1
        shutil.move(str(source), str(dest))
        self._manager.reload()


def remove_checkpoints(workdir: pathlib.Path) -> list[int]:
    """Deletes WORKDIR/checkpoints (for --restart); returns the steps that were there."""
    directory = pathlib.Path(workdir) / CHECKPOINTS_DIR
    if not directory.is_dir():
        return []
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    shutil.rmtree(directory)
    return steps


def save_weights(workdir: pathlib.Path, state: TrainState) -> pathlib.Path:
    path = (pathlib.Path(workdir) / WEIGHTS_DIR).absolute()
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path, {"params": state.params, "model_state": state.model_state}, force=True)
        checkpointer.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        raise _save_failure(e, int(jax.device_get(state.step)), path, []) from None
    return path


def restore_weights(workdir: pathlib.Path, target: dict) -> dict:
    """The saved {"params", "model_state"}, restored into the structure, shapes and dtypes of
    `target` (arrays or `jax.ShapeDtypeStruct`s)."""
    path = (pathlib.Path(workdir) / WEIGHTS_DIR).absolute()
    if not path.is_dir():
        raise UserError(f"no trained weights in {str(path)!r}: train first with 'jaxmodels train CONFIG --workdir {workdir}'")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    # Without a sharding orbax would restore onto the devices the run was saved from, which fails
    # when those differ (trained on 8 devices, sampled on 1): unplaced leaves go to one device.
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None
        else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), target)
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except (ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"weights in {str(path)!r} do not match this config's model ({first}): use the config the run was trained with") from None
    except Exception as e:  # noqa: BLE001 - tensorstore reports damaged files as bare Exception
        cause = e.__cause__ or e
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise UserError(f"weights in {str(path)!r} cannot be read ({first}): they are damaged; "
                        f"relaunch the run's train command, which writes them again from its "
                        f"last checkpoint") from None

