"""Shardings of the whole train state, derived as data from the model's logical axis names.

`state_shardings` takes the boxed variables from `jax.eval_shape(model.init)` (no memory is
allocated), reads each parameter's logical names from its `nn.Partitioned` box, maps them through
the rules table, and gives a parameter without a box (a plain `nn.Dense`, a pure-function model's
dict of arrays or `jax.ShapeDtypeStruct`s) the rules table's default rule (`rules.default_spec`).
It gives the optimizer state the shardings of the parameters it mirrors: an
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
from jaxmodels.parallel import mesh as mesh_lib
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
    # How each parameter was placed, as {"count": ..., "bytes": ...}: split through its logical
    # names, split by the default rule (it names none), left whole on every device.
    by_name: dict[str, int] = dataclasses.field(default_factory=lambda: {"count": 0, "bytes": 0})
    by_default: dict[str, int] = dataclasses.field(default_factory=lambda: {"count": 0, "bytes": 0})
    replicated: dict[str, int] = dataclasses.field(default_factory=lambda: {"count": 0, "bytes": 0})
    unnamed: int = 0  # parameters that name no logical axes (whatever happened to them)

    def as_dict(self) -> dict:
        """JSON-ready (lists, not tuples, so it equals what summary.json reads back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def describe(self) -> str:
        mib = 2 ** 20
        mesh = " x ".join(f"{a}={n}" for a, n in self.mesh_shape.items())
        line = (f"mesh {mesh} ({self.preset}): params {self.params_bytes_per_device / mib:.2f} MiB"
                f"/device of {self.params_bytes / mib:.2f} MiB, optimizer state "
                f"{self.opt_state_bytes_per_device / mib:.2f} MiB/device of "
                f"{self.opt_state_bytes / mib:.2f} MiB; parameters split by name "
                f"{_count(self.by_name)}, by the default rule {_count(self.by_default)}, "
                f"replicated {_count(self.replicated)}")
        note = mesh_lib.degraded(self.preset, self.mesh_shape)
        if note:
            line += f"; note: {note}"
        if self.unnamed and self.preset in SHARDING_PRESETS:
            line += (f"; {self.unnamed} parameter(s) name no logical axes (default rule: largest "
                     f"divisible dimension, see jaxmodels/parallel/rules.py); to place them by "
                     f"the rules table, create them with "
                     f"nn.with_logical_partitioning(init, (\"embed\", \"mlp\"))")
        return line


def _count(c: dict[str, int]) -> str:
    return f"{c['count']} ({c['bytes'] / 2 ** 20:.2f} MiB)"


def _key(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _per_device_bytes(shapes, shardings) -> tuple[int, int]:
    total = per_device = 0
    for x, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
        itemsize = x.dtype.itemsize
        total += math.prod(x.shape) * itemsize
        per_device += math.prod(s.shard_shape(x.shape)) * itemsize
    return total, per_device


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def _nbytes(x) -> int:
    return math.prod(x.shape) * x.dtype.itemsize


def param_specs(params, preset: str, mesh_shape: dict[str, int], *,
                default_min_bytes: int = rules_lib.DEFAULT_MIN_BYTES):
    """(tree of mesh PartitionSpecs shaped like the unboxed params, fallbacks, placements).

    `params` may mix boxed leaves (`nn.Partitioned`: placed by the rules table from their logical
    names) and plain ones (arrays, `jax.ShapeDtypeStruct`s: placed by `rules.default_spec`).
    placements: one of "name", "default", "replicated" per leaf, in leaf order, and whether the
    leaf was named."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)
    treedef = jax.tree.structure(nn.meta.unbox(params))
    specs, fallbacks, placements = [], [], []
    for path, leaf in flat:
        named = _is_box(leaf)
        x = leaf.value if named else leaf
        if named:
            spec, fb = rules_lib.mesh_spec(P(*leaf.names), x.shape, preset, mesh_shape,
                                           path=_key(path))
            fallbacks.extend(fb)
        else:
            spec = rules_lib.default_spec(tuple(x.shape), _nbytes(x), preset, mesh_shape,
                                          min_bytes=default_min_bytes)
        split = any(a is not None for a in spec)
        placements.append(("name" if named else "default") if split else "replicated")
        specs.append((spec, named))
    unnamed = sum(not named for _, named in specs)
    return (jax.tree.unflatten(treedef, [s for s, _ in specs]), fallbacks,
            (tuple(placements), unnamed))


def state_shardings(state_shapes, boxed_params, mesh: Mesh, preset: str, *,
                    threshold_bytes: int = 1 << 20, strict: bool = False, default_min_bytes: int = rules_lib.DEFAULT_MIN_BYTES):
    """(TrainState-shaped tree of NamedShardings, Report) for `state_shapes` (eval_shape'd
    TrainState) whose params carry the logical names found in `boxed_params`. With
    `boxed_params=None` (or where its leaves are plain arrays or `jax.ShapeDtypeStruct`s)
    parameters are placed by the default rule, `default_min_bytes` its threshold."""
    if boxed_params is None:
        boxed_params = state_shapes.params
    mesh_shape = dict(mesh.shape)
    specs, fallbacks, (placements, unnamed) = param_specs(
        boxed_params, preset, mesh_shape, default_min_bytes=default_min_bytes)
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
    counts = {k: {"count": 0, "bytes": 0} for k in ("name", "default", "replicated")}
    for x, placed in zip(jax.tree.leaves(state_shapes.params), placements, strict=True):
        counts[placed]["count"] += 1
        counts[placed]["bytes"] += _nbytes(x)
    report = Report(preset, mesh_shape, params_total, params_dev, opt_total, opt_dev,
                    tuple(map(str, fallbacks)), tuple(large), by_name=counts["name"],
                    by_default=counts["default"], replicated=counts["replicated"],
                    unnamed=unnamed)
    if large:
        message = (f"parallel.preset={preset} leaves {len(large)} parameter(s) of at least "
                   f"{threshold_bytes} bytes fully replicated on every device: {'; '.join(large)}")
        if strict:
            raise ConfigError(message + " (parallel.strict=true): change the mesh sizes so that "
                                        "their dimensions divide, or raise parallel.replication_threshold_bytes")
        warnings.warn(message, stacklevel=2)
    return shardings, report

