"""The device mesh: ("data", "fsdp", "tensor") sized from `config.parallel`.

Every placement the loop does goes through this package: the mesh here, the per-parameter
shardings in `sharding.py` (derived from `rules.py`), so a new layout is a change of table, not
of the loop.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmodels.config import ParallelConfig
from jaxmodels.errors import UserError
from jaxmodels.parallel.rules import BATCH_AXES, MESH_AXES

# The mesh shape each preset uses for the sizes the config leaves at None; -1 takes the devices
# the other axes leave.
PRESET_SHAPES: dict[str, dict[str, int]] = {
    "data": {"data": -1, "fsdp": 1, "tensor": 1},
    "fsdp": {"data": 1, "fsdp": -1, "tensor": 1},
    "tensor": {"data": 1, "fsdp": 1, "tensor": -1},
    "fsdp_tensor": {"data": 1, "fsdp": -1, "tensor": 2},
}


def mesh_shape(cfg: ParallelConfig, num_devices: int) -> dict[str, int]:
    """Axis sizes for `num_devices` devices: the preset's defaults, overridden by the config's
    explicit sizes, with one -1 resolved. Raises a one-line UserError when they cannot fit."""
    explicit = {a: getattr(cfg, a) for a in MESH_AXES if getattr(cfg, a) is not None}
    shape = {**_preset_sizes(cfg.preset, num_devices, explicit), **explicit}
    if -1 in explicit.values():
        # The user's -1 wins over the preset's.
        shape = {a: (1 if v == -1 and a not in explicit else v) for a, v in shape.items()}
    elif -1 not in shape.values() and "data" not in explicit:
        shape["data"] = -1  # data replicas absorb whatever the model axes leave
    fixed = math.prod(v for v in shape.values() if v != -1)
    sizes = ", ".join(f"parallel.{a}={getattr(cfg, a) if getattr(cfg, a) is not None else 'none'}"
                      for a in MESH_AXES)
    if -1 in shape.values():
        free = next(a for a, v in shape.items() if v == -1)
        if num_devices % fixed:
            raise UserError(
                f"mesh {_fmt(shape)} cannot fill {num_devices} devices ({sizes}, preset "
                f"{cfg.preset}): the fixed axes' product {fixed} must divide the device count")
        shape[free] = num_devices // fixed
    elif fixed != num_devices:
        raise UserError(
            f"mesh {_fmt(shape)} needs {fixed} devices but {num_devices} are available ({sizes}): "
            f"make the product of parallel.data/fsdp/tensor {num_devices}, or set one of them to -1")
    return shape


def _preset_sizes(preset: str, num_devices: int, explicit: dict[str, int]) -> dict[str, int]:
    """The preset's default sizes, its fixed ones shrunk to what `num_devices` allows
    (fsdp_tensor's tensor=2 is tensor=1 on one device, the free Colab TPU). A size the user
    set is never shrunk: it fits or is an error."""
    fixed = math.prod(v for a, v in explicit.items() if v != -1)
    room = num_devices // fixed if fixed and num_devices % fixed == 0 else num_devices
    return {a: math.gcd(v, room) if v > 1 else v for a, v in PRESET_SHAPES[preset].items()}


def degraded(preset: str, shape: dict[str, int]) -> str | None:
    """What the preset could not do on this mesh, in words, or None: the start-up line and
    `plan` say so rather than leave a user wondering why nothing was sharded."""
    if preset == "data":
        return None
    wanted = {a: v for a, v in PRESET_SHAPES[preset].items() if v > 1 and shape[a] < v}
    notes = [f"the preset's {a}={v} is {a}={shape[a]} here" for a, v in wanted.items()]
    if shape["fsdp"] * shape["tensor"] == 1:
        notes.append(f"on {math.prod(shape.values())} device(s) preset {preset} shards nothing "
                     f"(fsdp=1, tensor=1): every device holds every parameter")
    return "; ".join(notes) or None


def _fmt(shape: dict[str, int]) -> str:
    return "(" + ", ".join(f"{a}={'?' if v == -1 else v}" for a, v in shape.items()) + ")"


def make_mesh(cfg: ParallelConfig = ParallelConfig(), devices=None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over `devices` (default: all of them)."""
    devices = list(jax.devices() if devices is None else devices)
    if cfg.devices is not None:
        if jax.process_count() > 1:
            raise UserError(f"parallel.devices={cfg.devices} picks devices of one process: leave it "
                            f"unset in a multi-process run (every process's devices take part)")
        if cfg.devices > len(devices):
            raise UserError(f"parallel.devices={cfg.devices} but only {len(devices)} devices are "
                            f"visible: lower it, or leave it unset to use all")
        devices = devices[:cfg.devices]
    shape = mesh_shape(cfg, len(devices))
    # Auto axes: Flax's logical partitioning and GSPMD propagation expect them (JAX 0.10 defaults
    # to Explicit).
    return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways a batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """One-line UserError, before anything compiles, when a batch cannot split evenly."""
    dp = data_parallel_size(mesh)
    if batch_size % dp:
        raise UserError(
            f"data.batch_size={batch_size} is not divisible by the {dp} data-parallel devices "
            f"(mesh {dict(mesh.shape)}): use a multiple of {dp}, e.g. "
            f"data.batch_size={dp * max(1, round(batch_size / dp))}")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every batch axis; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_map_step(step, mesh: Mesh, axis: str = "data"):
    """`step(state, batch)` built with `make_train_step(..., axis_name=axis)`, run per shard with
    `jax.shard_map`: state replicated, batch split along `axis`, outputs replicated. The explicit
    alternative to the jitted GSPMD step (same numbers), and the pattern a custom collective
    (compressed gradients, a different reduction) would start from."""
    return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P(axis)), out_specs=(P(), P())),
                   donate_argnums=0)
