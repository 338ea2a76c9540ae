"""Multi-process (multi-host) start-up and feeding each process its slice of a global batch.

One process per host, all running the same command; `start` joins them into one JAX runtime
(from explicit settings, or from the cluster JAX detects: SLURM, Open MPI, Cloud TPU,
Kubernetes) whose `jax.devices()` spans every host, so the mesh, the rules table and the jitted
steps are the same as on one host. Every process runs the same deterministic data pipeline (same seed, same
global batch) and hands JAX only the rows its own devices hold.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxmodels.errors import UserError
from jaxmodels.parallel import clusters

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def settings_from(coordinator: str | None, num_processes: int | None, process_id: int | None
                  ) -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from the flags, falling back to the JAX_* env
    variables; None when neither asks for more than one process."""
    coordinator = coordinator or os.environ.get(ENV[0])
    if num_processes is None and os.environ.get(ENV[1]):
        num_processes = int(os.environ[ENV[1]])
    if process_id is None and os.environ.get(ENV[2]):
        process_id = int(os.environ[ENV[2]])
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given):
        return None
    if not all(given):
        raise UserError("multi-process training needs all of --coordinator HOST:PORT, "
                        "--num-processes N and --process-id I (or JAX_COORDINATOR_ADDRESS, "
                        "JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process-id {process_id} is not in [0, {num_processes}): number the "
                        f"processes 0 to {num_processes - 1}")
    return coordinator, num_processes, process_id


MODES = ("auto", "off")


def start(mode: str | None = None, coordinator: str | None = None,
          num_processes: int | None = None, process_id: int | None = None, *,
          log=None) -> bool:
    """Joins the other processes of a multi-process run, if this is one; True when it is.

    Explicit settings (the flags, else the JAX_* variables) win. Otherwise `mode` decides:
    "off" stays one process; "auto" requires a cluster JAX can detect (SLURM, Open MPI, Cloud
    TPU, Kubernetes); None (the default) joins a detected cluster of more than one process and
    stays one process anywhere else. A join is announced in one line on `log`.
    """
    log = sys.stderr if log is None else log
    if mode not in (None, *MODES):
        raise UserError(f"--distributed {mode!r} is not one of {', '.join(MODES)}: pass "
                        f"--distributed auto (detect the cluster) or off (one process)")
    explicit = settings_from(coordinator, num_processes, process_id)
    if explicit is not None:
        if mode == "off":
            raise UserError("--distributed off contradicts the multi-process settings given (flags "
                            "or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID): drop "
                            "one or the other")
        initialize(*explicit)
        _announce("explicit settings", log)
        return True
    if mode == "off":
        return False
    cluster = clusters.detect()
    if cluster is None and mode is None:
        return False
    if cluster is None and not clusters.has_detectors():
        # JAX's detectors moved: let jax.distributed.initialize find the cluster itself.
        initialize()
        _announce("a cluster JAX detected", log)
        return True
    if cluster is None:
        raise UserError("--distributed auto found no cluster environment (a SLURM job step, an "
                        "Open MPI launch, a Cloud TPU slice, a Kubernetes Job): launch under one "
                        "(e.g. srun), or give --coordinator HOST:PORT --num-processes N "
                        "--process-id I")
    if mode is None:
        try:
            count = cluster.process_count()
        except Exception as e:  # noqa: BLE001 (a detector's own failure, whatever it is)
            print(f"jaxmodels: found a {cluster.name} environment but not its process count "
                  f"({type(e).__name__}: {e}); running as one process (--distributed auto "
                  f"would make this an error)", file=log)
            return False
        if count <= 1:
            return False  # a one-task job: nothing to join
    initialize()
    _announce(f"{cluster.name} cluster", log)
    return True


def _announce(source: str, log) -> None:
    print(f"jaxmodels: {source}: process {jax.process_index()} of {jax.process_count()}, "
          f"coordinator {clusters.coordinator_address()}", file=log)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to the others (arguments left None are detected by JAX). Call once,
    before anything touches a JAX device."""
    # CPU devices of different processes talk through gloo; the default has no cross-process
    # collectives. The setting only concerns the CPU backend, so it is harmless on accelerators.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def is_main() -> bool:
    """Process 0 writes the files; the others only compute."""
    return jax.process_index() == 0


def process_rows(sharding: NamedSharding, global_rows: int) -> slice:
    """The rows of a batch (leading dimension) that this process's devices hold."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((global_rows,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(global_rows if rows.stop is None else rows.stop)
    start, stop = min(starts), max(stops)
    # make_array_from_process_local_data takes one contiguous block per process, which is what a
    # mesh built process by process gives; anything else is a device order this code does not
    # handle.
    if sum(b - a for a, b in set(zip(starts, stops))) != stop - start:
        raise UserError("this process's devices do not hold one contiguous block of the batch: "
                        "build the mesh with each process's devices adjacent on the batch axes")
    return slice(start, stop)


class LocalBatch(dict):
    """A batch holding only this process's rows of a global batch of `global_rows`."""

    global_rows: int = 0


class LocalStream:
    """A source's local_train_batches stream, its batches marked as LocalBatch for put_batch;
    get_state/set_state are the inner stream's (the state of a (seed, k) stream is k)."""

    def __init__(self, inner, global_rows: int):
        self.inner, self.global_rows = inner, global_rows

    def __iter__(self):
        return self

    def __next__(self) -> LocalBatch:
        batch = LocalBatch(next(self.inner))
        batch.global_rows = self.global_rows
        return batch

    def get_state(self) -> dict:
        return self.inner.get_state()

    def set_state(self, state: dict) -> None:
        self.inner.set_state(state)


def train_stream(source, seed: int, sharding: NamedSharding, global_rows: int):
    """The training stream of `source` for this process: with several processes and a source
    that has local_train_batches (see data/source.py), only this process's rows are read;
    otherwise the global batch, of which put_batch keeps this process's rows."""
    local = getattr(source, "local_train_batches", None)
    if jax.process_count() == 1 or local is None:
        return source.train_batches(seed)
    return LocalStream(local(seed, process_rows(sharding, global_rows)), global_rows)


def put_batch(batch: dict, sharding: NamedSharding) -> dict:
    """A global batch (the same numpy arrays on every process) ready for a jitted step whose
    `in_shardings` give this batch `sharding`: with several processes, sharded jax Arrays to
    which each process contributes only its own rows.

    With one process the numpy arrays are returned as they are: jit's C++ dispatch places them
    by its in_shardings, and that costs less than `jax.device_put` of the dict beforehand (about
    0.5 ms a step less for the seed CNN at batch 32 on CPU, ~8 % of its step; measured with
    benchmarks/overhead.py). The step must only ever see numpy batches then, or it compiles twice.
    """
    if jax.process_count() == 1:
        return {key: np.asarray(value) for key, value in batch.items()}
    if isinstance(batch, LocalBatch):  # already this process's rows (train_stream)
        return {key: jax.make_array_from_process_local_data(
                    sharding, np.asarray(value), (batch.global_rows, *np.shape(value)[1:]))
                for key, value in batch.items()}
    # Every array of a batch shares its leading (batch) dimension: one row range serves them all.
    rows = process_rows(sharding, len(next(iter(batch.values()))))
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value)[rows],
                                                        np.shape(value))
            for key, value in batch.items()}


def sum_on_host(outputs: Iterable[dict]) -> dict:
    """The sum over batches of replicated per-batch outputs (any pytree of arrays: an eval
    step's {name: (sum, count)}), added leaf by leaf on the host in float64.

    Each output is fetched one batch late, after the next batch's step has been dispatched, so
    the devices never wait for the host. Adding the outputs with jnp instead would run an eager
    program on global arrays between the steps; with several processes those programs and the
    step's collectives need not run in the same order everywhere, and the run deadlocks (it did,
    in the final evaluation). Here the steps are the only programs, in the same order on every
    process.
    """
    total, previous = None, None
    for out in outputs:
        if previous is not None:
            total = _add(total, jax.device_get(previous))
        previous = out
    if previous is not None:
        total = _add(total, jax.device_get(previous))
    return total if total is not None else {}


def _add(total, fetched):
    fetched = jax.tree.map(lambda x: np.asarray(x, np.float64), fetched)
    return fetched if total is None else jax.tree.map(np.add, total, fetched)
