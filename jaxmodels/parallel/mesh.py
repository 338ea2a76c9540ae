"""Device meshes and shardings.

The foundation trains on one device: a one-axis "data" mesh with state replicated and batches
split along "data". Everything the loop places goes through these functions, so data, FSDP and
tensor parallelism arrive by changing what they return, not the loop.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int = 1) -> Mesh:
    """A ("data",) mesh over the first `num_devices` devices."""
    devices = jax.devices()[:num_devices]
    if len(devices) != num_devices:
        raise ValueError(f"asked for {num_devices} devices, found {len(jax.devices())}")
    # Auto axes: Flax's logical partitioning and GSPMD propagation expect them (JAX 0.10 defaults
    # to Explicit).
    return jax.make_mesh((num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis."""
    return NamedSharding(mesh, P("data"))
