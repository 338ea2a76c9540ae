"""Shardings of the whole train state, derived as data from the model's logical axis names.

`state_shardings` takes the boxed variables from `jax.eval_shape(model.init)` (no memory is
allocated), reads each parameter's logical names with `nn.get_partition_spec`, maps them through
the rules table, and gives the optimizer state the shardings of the parameters it mirrors: an
optimizer leaf whose tree path ends with a parameter's path and has that parameter's shape (Adam's
mu and nu, momentum, ...) is sharded like it; anything else (step counts, Adafactor's factored
second moments) is replicated. With those shardings `jax.jit(init, out_shardings=...)` creates the
state already in place.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxmodels.errors import ConfigError
from jaxmodels.parallel import rules as rules_lib

# Presets under which parameters are expected to be split, hence where a large replicated
# parameter is worth a warning.
SHARDING_PRESETS = ("fsdp", "tensor", "fsdp_tensor")


@dataclasses.dataclass(frozen=True)
class Report:
    """Where the state went: per-device bytes and what the rules could not split."""

    preset: str
    mesh_shape: dict[str, int]
    params_bytes: int  # whole model
    params_bytes_per_device: int
    opt_state_bytes: int
    opt_state_bytes_per_device: int
    fallbacks: tuple[str, ...]  # dimensions replicated because their mesh axes do not divide them
    replicated_large: tuple[str, ...]  # parameters over the threshold left fully replicated

    def as_dict(self) -> dict:
        """JSON-ready (lists, not tuples, so it equals what summary.json reads back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def describe(self) -> str:
        mib = 2 ** 20
        mesh = " x ".join(f"{a}={n}" for a, n in self.mesh_shape.items())
        return (f"mesh {mesh} ({self.preset}): params {self.params_bytes_per_device / mib:.2f} MiB"
                f"/device of {self.params_bytes / mib:.2f} MiB, optimizer state "
                f"{self.opt_state_bytes_per_device / mib:.2f} MiB/device of "
                f"{self.opt_state_bytes / mib:.2f} MiB")


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _per_device_bytes(shapes, shardings) -> tuple[int, int]:
    total = per_device = 0
    for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        itemsize = x.dtype.itemsize
        total += math.prod(x.shape) * itemsize
        per_device += math.prod(s.shard_shape(x.shape)) * itemsize
    return total, per_device


def param_specs(boxed_params, preset: str, mesh_shape: dict[str, int]):
    """(tree of mesh PartitionSpecs shaped like the unboxed params, fallbacks)."""
    logical = nn.get_partition_spec(boxed_params)
    shapes = nn.meta.unbox(boxed_params)
    is_spec = lambda x: isinstance(x, P) or x is None  # noqa: E731
    flat_logical, treedef = jax.tree_util.tree_flatten_with_path(logical, is_leaf=is_spec)
    flat_shapes = jax.tree.leaves(shapes)
    specs, fallbacks = [], []
    for (path, spec), x in zip(flat_logical, flat_shapes, strict=True):
        mesh_spec, fb = rules_lib.mesh_spec(spec, x.shape, preset, mesh_shape, path=_key(path))
        specs.append(mesh_spec)
        fallbacks.extend(fb)
    return jax.tree.unflatten(treedef, specs), fallbacks


def state_shardings(state_shapes, boxed_params, mesh: Mesh, preset: str, *,
                    threshold_bytes: int = 1 << 20, strict: bool = False):
    """(TrainState-shaped tree of NamedShardings, Report) for `state_shapes` (eval_shape'd
    TrainState) whose params carry the logical names found in `boxed_params`."""
    mesh_shape = dict(mesh.shape)
    specs, fallbacks = param_specs(boxed_params, preset, mesh_shape)
    param_shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                                   is_leaf=lambda x: isinstance(x, P))
    replicated = NamedSharding(mesh, P())

    by_path = {}
    for (path, x), s in zip(jax.tree_util.tree_flatten_with_path(state_shapes.params)[0],
                            jax.tree.leaves(param_shardings), strict=True):
        by_path[tuple(path)] = (x.shape, s)

    def opt_leaf(path, x):
        # The longest suffix of the optimizer leaf's path that names a parameter of its shape.
        for start in range(len(path)):
            hit = by_path.get(tuple(path[start:]))
            if hit is not None and hit[0] == x.shape:
                return hit[1]
        return replicated

    opt_shardings = jax.tree_util.tree_map_with_path(opt_leaf, state_shapes.opt_state)
    shardings = state_shapes.replace(
        step=replicated, params=param_shardings, opt_state=opt_shardings,
        model_state=jax.tree.map(lambda _: replicated, state_shapes.model_state), rng=replicated,
        loss_stats=replicated)

    params_total, params_dev = _per_device_bytes(state_shapes.params, param_shardings)
    opt_total, opt_dev = _per_device_bytes(state_shapes.opt_state, opt_shardings)
    large = []
    if preset in SHARDING_PRESETS and mesh_shape["fsdp"] * mesh_shape["tensor"] > 1:
        for (path, x), spec in zip(jax.tree_util.tree_flatten_with_path(state_shapes.params)[0],
                                   jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
            nbytes = math.prod(x.shape) * x.dtype.itemsize
            if nbytes >= threshold_bytes and all(a is None for a in spec):
                large.append(f"{_key(path)} {tuple(x.shape)} ({nbytes / 2 ** 20:.2f} MiB)")
    report = Report(preset, mesh_shape, params_total, params_dev, opt_total, opt_dev,
                    tuple(map(str, fallbacks)), tuple(large))
    if large:
        message = (f"parallel.preset={preset} leaves {len(large)} parameter(s) of at least "
                   f"{threshold_bytes} bytes fully replicated on every device: {'; '.join(large)}")
        if strict:
            raise ConfigError(message + " (parallel.strict=true): change the mesh sizes so that "
                                        "their dimensions divide, or raise parallel.replication_threshold_bytes")
        warnings.warn(message, stacklevel=2)
    return shardings, report

