"""The one rules table: logical axis names -> mesh axes, per parallelism preset.

Models name the axes of every parameter ("embed", "mlp", "heads", "kv", "head_dim", "vocab",
"classes", "conv_in", "conv_out", "layers", "max_len", ...) and never mention a mesh axis; batches
carry the logical name "batch" on their leading dimension. The mesh has three axes:

  data    independent replicas, each on its own slice of the batch
  fsdp    also splits the batch, and shards parameters (ZeRO-3: optimizer state and gradients
          follow the parameters, each device holds 1/fsdp of them)
  tensor  Megatron-style model parallelism: attention heads and MLP hidden units are split

Rules are ordered pairs (logical name, mesh axes). For one parameter, each rule in turn claims
the dimensions carrying its logical name, provided its mesh axes are still unused by that
parameter and divide the dimension's size; a logical name with no rule is replicated. The order
is therefore a priority list: under fsdp, "embed" (the model width, usually the largest dimension)
is sharded when the parameter has it, otherwise the next name in the list.

A dimension its mesh axes do not divide is replicated instead (and reported, see
`jaxmodels.parallel.sharding`), except "heads": splitting attention heads unevenly over the
tensor axis is a configuration mistake, reported before anything compiles.

Parameters without logical names (a plain `nn.Dense`, a pure init/apply pair's dict of arrays)
get one default rule instead, `default_spec`: under a preset that splits parameters, a parameter
of at least DEFAULT_MIN_BYTES has its largest dimension divisible by the mesh axis split over
it, "tensor" first (it fixes the model-parallel layout), then "fsdp" on another dimension; ties go
to the later dimension. Why "largest": for a dense kernel (in, out) it is the MLP's hidden units
on both the up (D, F) and the down (F, D) projection, which is Megatron's column-then-row split
with no names at all, and under fsdp it is the dimension that divides the bytes most evenly. Why
ties to the later one: Flax kernels are (..., in, out), so a square kernel is split by output
features (column parallel), and a convolution kernel (kh, kw, in, out) by its filters. Below the
threshold (biases, norm scales, small kernels) a parameter stays replicated: gathering it every
step would cost a collective's latency to save a few kilobytes. Named parameters never use this
rule, even where the table leaves them replicated.
"""

from __future__ import annotations

import dataclasses
import math

from jax.sharding import PartitionSpec as P

from jaxmodels.errors import UserError

MeshAxes = str | tuple[str, ...] | None

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over every axis that does not split the model's width or heads.
BATCH_AXES = ("data", "fsdp")

_BATCH = (("batch", BATCH_AXES),)
_FSDP = (("embed", "fsdp"), ("mlp", "fsdp"), ("conv_out", "fsdp"), ("vocab", "fsdp"),
         ("classes", "fsdp"))
_TENSOR = (("heads", "tensor"), ("kv", "tensor"), ("mlp", "tensor"))

RULES: dict[str, tuple[tuple[str, MeshAxes], ...]] = {
    # Parameters replicated; only batches are split.
    "data": _BATCH,
    # ZeRO-3: the largest named dimension of each parameter over "fsdp".
    "fsdp": _BATCH + _FSDP,
    # Megatron: q/k/v split by heads (column parallel), the output projection by heads (row
    # parallel), the MLP's up by hidden units (column) and down by hidden units (row).
    "tensor": _BATCH + _TENSOR,
    # Both: tensor rules first (they fix the model-parallel layout), then fsdp on what is left
    # ("mlp" is claimed by "tensor" first, so the fsdp fallback list skips it).
    "fsdp_tensor": _BATCH + _TENSOR + _FSDP,
}

# Activations carry their own logical names ("act_*"), so a preset can split the batch of an
# activation without splitting the model width the way it splits parameters under fsdp.
ACTIVATION_RULES: dict[str, tuple[tuple[str, MeshAxes], ...]] = {
    "data": (("act_batch", BATCH_AXES),),
    "fsdp": (("act_batch", BATCH_AXES),),
    "tensor": (("act_batch", BATCH_AXES), ("act_heads", "tensor"), ("act_mlp", "tensor")),
    "fsdp_tensor": (("act_batch", BATCH_AXES), ("act_heads", "tensor"), ("act_mlp", "tensor")),
}


def activation_rules(preset: str, mesh_shape: dict[str, int]) -> tuple[tuple[str, MeshAxes], ...]:
    """Flax-style (logical, mesh axes) rules for activations, without mesh axes of size 1."""
    out = []
    for name, axes in ACTIVATION_RULES[preset]:
        kept = tuple(a for a in _axes_tuple(axes) if mesh_shape.get(a, 1) > 1)
        out.append((name, kept if len(kept) > 1 else (kept[0] if kept else None)))
    return tuple(out)


# The default rule's axes per preset, in the order they claim a dimension.
DEFAULT_AXES: dict[str, tuple[str, ...]] = {
    "data": (),
    "fsdp": ("fsdp",),
    "tensor": ("tensor",),
    "fsdp_tensor": ("tensor", "fsdp"),
}
# Smallest parameter (bytes) the default rule splits: 64 KiB, a 128 x 128 float32 kernel.
DEFAULT_MIN_BYTES = 1 << 16


def default_spec(shape: tuple[int, ...], nbytes: int, preset: str, mesh_shape: dict[str, int], *,
                 min_bytes: int = DEFAULT_MIN_BYTES) -> P:
    """The mesh PartitionSpec of a parameter that names no logical axes (see the module
    docstring): P() when it is below `min_bytes`, the preset splits no parameters, or no
    dimension divides."""
    out: list[MeshAxes] = [None] * len(shape)
    if nbytes < min_bytes:
        return P()
    for axis in DEFAULT_AXES[preset]:
        n = mesh_shape.get(axis, 1)
        if n <= 1:
            continue
        free = [d for d in range(len(shape)) if out[d] is None and shape[d] % n == 0]
        if free:
            # max over (size, index): the largest dimension, the later one on a tie.
            out[max(free, key=lambda d: (shape[d], d))] = axis
    while out and out[-1] is None:
        out.pop()
    return P(*out)


# Dimensions that must divide evenly: an uneven split is an error rather than a silent replica.
MUST_DIVIDE = {"heads"}


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A dimension the rules wanted sharded but its mesh axes do not divide: replicated."""

    path: str
    logical: str
    size: int
    mesh_axes: MeshAxes
    mesh_size: int

    def __str__(self):
        return (f"{self.path}: {self.logical}={self.size} not divisible by {self.mesh_axes} "
                f"({self.mesh_size} devices), replicated")


def _axes_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def mesh_spec(logical: P | None, shape: tuple[int, ...], preset: str, mesh_shape: dict[str, int],
              path: str = "") -> tuple[P, list[Fallback]]:
    """The mesh PartitionSpec of one array named by `logical` (one name or None per dimension),
    and the dimensions that fell back to replication."""
    names = tuple(logical) if logical is not None else (None,) * len(shape)
    if len(names) < len(shape):
        names = names + (None,) * (len(shape) - len(names))
    out: list[MeshAxes] = [None] * len(shape)
    used: set[str] = set()
    fallbacks: list[Fallback] = []
    for name, axes in RULES[preset]:
        wanted = tuple(a for a in _axes_tuple(axes) if mesh_shape.get(a, 1) > 1)
        if not wanted:
            continue  # every mesh axis of this rule has size 1: nothing to split
        for dim, dim_name in enumerate(names):
            if dim_name != name or out[dim] is not None:
                continue
            if used & set(wanted):
                break  # a mesh axis may split only one dimension of an array
            n = math.prod(mesh_shape[a] for a in wanted)
            if shape[dim] % n:
                if name in MUST_DIVIDE:
                    raise UserError(
                        f"{path or 'a parameter'} has {name}={shape[dim]}, not divisible by mesh "
                        f"axes {wanted} of {n} devices: set parallel.tensor to a divisor of "
                        f"{shape[dim]} (e.g. parallel.tensor={math.gcd(shape[dim], n)})")
                fallbacks.append(Fallback(path, name, shape[dim], axes, n))
                continue
            out[dim] = wanted[0] if len(wanted) == 1 else wanted
            used.update(wanted)
            break
    while out and out[-1] is None:
        out.pop()  # P("x", None) == P("x") semantically; the short form reads better in reports
    return P(*out), fallbacks

