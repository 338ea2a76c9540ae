"""Every process of a multi-process run agrees on when a signal stops it.

A preemption notice (SIGTERM) may reach only some hosts. A process that stopped on its own would
leave the others blocked in the next collective, so instead each process votes at every step
boundary with the signal it has received (0 for none), and all of them act on the largest vote:
they save the same step and exit with the same code.
Outside the step loop (start-up, after the final evaluation, after the weights) there is no next
step to hide a vote behind: `now` votes and waits for the result, at boundaries that every
process reaches in the same order, so a signal to one host during the final evaluation stops
all of them after it, each with its one line, instead of leaving the others in the next
collective (orbax's weight save) until JAX's heartbeat timeout.

The vote is one tiny jitted max over one int32 per device, dispatched after step k and read after
step k+1 has been dispatched, so the host never waits for the devices (the run stops one step
after the signal, at the same step everywhere). Programs run in the same order on every process
because every process dispatches the same sequence: step, vote, step, vote. A one-process run
needs no agreement and gets none: its vote is the local signal, with no program at all.

JAX's preemption sync manager (`multihost_utils.reached_preemption_sync_point`) does the same
through the coordination service, but it learns of SIGTERM through a handler of its own, which
the loop's handler (needed for SIGINT and the one-process case) replaces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


class StopVote:
    """`vote(local_signal) -> agreed signal or None`, called once per step boundary;
    `vote.now(local_signal)` at the boundaries outside the step loop."""

    def __init__(self, mesh: Mesh):
        self._multi = jax.process_count() > 1
        self._pending = None
        if not self._multi:
            return
        devices = mesh.devices.flatten()
        # One entry per device of the whole run, each process filling its own devices' entries.
        self._sharding = NamedSharding(Mesh(devices, ("all",)), P("all"))
        self._shape = (devices.size,)
        self._local = [d for d in devices if d.process_index == jax.process_index()]
        self._max = jax.jit(jnp.max, out_shardings=NamedSharding(Mesh(devices, ("all",)), P()))

    def _ballot(self, local_signal: int | None) -> jax.Array:
        value = np.asarray([local_signal or 0], np.int32)
        return self._max(jax.make_array_from_single_device_arrays(
            self._shape, self._sharding, [jax.device_put(value, d) for d in self._local]))

    def __call__(self, local_signal: int | None) -> int | None:
        if not self._multi:
            return local_signal
        previous, self._pending = self._pending, self._ballot(local_signal)
        if previous is None:
            return None
        # Replicated on every device: any process reads its own copy, no transfer between hosts.
        return int(jax.device_get(previous)) or None

    def now(self, local_signal: int | None) -> int | None:
        """The agreed signal at a point outside the step loop that every process reaches in
        the same order (start-up, after the final evaluation, after the weights): a blocking
        vote, since there is no next step to hide it behind. The step loop's pending ballot is
        left as it is; the programs still run in one order on every process."""
        if not self._multi:
            return local_signal
        return int(jax.device_get(self._ballot(local_signal))) or None
