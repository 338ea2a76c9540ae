"""Which cluster this process runs in, as JAX's own detectors see it.

`jax.distributed.initialize()` with no arguments finds the coordinator, the process count and
this process's id from the environment of a SLURM job step, an Open MPI launch, a Cloud TPU
slice (GCE or GKE) or a Kubernetes Job. This module asks the same detectors, in the same order,
only to name the cluster and read its process count before joining it, so that the start-up can
announce it and a one-process job does not start a coordinator for nothing. It is called from
the CLI's start-up only: nothing here runs at import.

JAX keeps the detectors private (`jax._src.clusters`); if they move, `detect` finds nothing and
`--distributed auto` still hands the decision to `jax.distributed.initialize()`.
"""

from __future__ import annotations

import dataclasses

NAMES = {"SlurmCluster": "SLURM", "OmpiCluster": "Open MPI", "GceTpuCluster": "Cloud TPU",
         "GkeTpuCluster": "Cloud TPU on GKE", "K8sCluster": "Kubernetes"}


@dataclasses.dataclass(frozen=True)
class Cluster:
    name: str  # for people: "SLURM", "Cloud TPU", ...
    env: type  # JAX's ClusterEnv subclass

    def process_count(self) -> int:
        return int(self.env.get_process_count())


def _detectors() -> list[type]:
    try:
        from jax._src import clusters
    except ImportError:
        return []
    # Opt-in detectors (mpi4py) only answer when asked by name; JAX skips them too.
    return [env for env in clusters.ClusterEnv._cluster_types if not env.opt_in_only_method]


def has_detectors() -> bool:
    return bool(_detectors())


def detect() -> Cluster | None:
    """The first cluster environment present, in JAX's order, or None."""
    for env in _detectors():
        if env.is_env_present():
            return Cluster(NAMES.get(env.__name__, env.__name__), env)
    return None


def coordinator_address() -> str | None:
    """The coordinator `jax.distributed.initialize` settled on (after it ran)."""
    try:
        from jax._src import distributed
    except ImportError:
        return None
    return getattr(distributed.global_state, "coordinator_address", None)
