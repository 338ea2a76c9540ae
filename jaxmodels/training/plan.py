"""`jaxmodels plan`: will a config fit in each device's memory, and if not, which knob helps.

Two views of the same training step, per device:
  analytic  parameters, optimizer state and gradients from the state's shardings (exact bytes),
            plus activations: every module output of one forward pass (`capture_intermediates`)
            at the per-device micro-batch, which is what the backward pass keeps without remat
  XLA       `memory_analysis()` of the compiled train step (arguments, outputs, temporaries),
            lowered from shapes only, so nothing is allocated
The budget is checked against the larger of the two.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.config import Config
from jaxmodels.errors import UserError
from jaxmodels.parallel import mesh as mesh_lib

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(text: str) -> int:
    """'16GiB', '512MB', '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"--device-memory {text!r} is not a size: write e.g. 16GiB, 80GB or 512MiB")
    try:
        return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    except ValueError:
        raise UserError(f"--device-memory {text!r} is not a size: write e.g. 16GiB") from None


def _gib(n: float) -> str:
    for unit, size in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


@dataclasses.dataclass(frozen=True)
class Plan:
    mesh_shape: dict[str, int]
    params: int  # bytes per device
    opt_state: int
    grads: int
    activations: int
    xla: dict | None  # memory_analysis() fields per device, when the backend gives them
    # Where each parameter goes: {"Dense_0/kernel": ((64, 128), PartitionSpec(None, "fsdp"))};
    # optimizer state and gradients follow their parameter.
    param_specs: dict = dataclasses.field(default_factory=dict)
    preset: str | None = None

    @property
    def analytic_total(self) -> int:
        return self.params + self.opt_state + self.grads + self.activations

    @property
    def xla_total(self) -> int | None:
        if not self.xla:
            return None
        x = self.xla
        return (x["argument_size_in_bytes"] + x["output_size_in_bytes"] - x["alias_size_in_bytes"]
                + x["temp_size_in_bytes"])

    @property
    def total(self) -> int:
        return max(self.analytic_total, self.xla_total or 0)

    def dominant(self) -> tuple[str, str]:
        """(term, the knob that shrinks it)."""
        # XLA's temporaries are mostly activations (and the attention logits the module outputs
        # do not show), so they stand for activations when larger.
        temp = self.xla["temp_size_in_bytes"] if self.xla else 0
        terms = {"params": self.params, "optimizer state": self.opt_state, "gradients": self.grads,
                 "activations": max(self.activations, temp)}
        name = max(terms, key=terms.get)
        if name == "activations":
            knob = ("model.remat=true (transformers), more train.microbatches, or a smaller "
                    "data.batch_size per device (more devices on parallel.data/fsdp)")
        else:
            knob = ("parallel.preset=fsdp or fsdp_tensor (shards parameters, gradients and "
                    "optimizer state), or a larger parallel.fsdp")
        return name, knob

    def describe(self) -> str:
        mesh = " x ".join(f"{a}={n}" for a, n in self.mesh_shape.items())
        note = mesh_lib.degraded(self.preset, self.mesh_shape) if self.preset else None
        lines = [f"per device on mesh {mesh}" + (f" ({note})" if note else "") + ":",
                 f"  params       {_gib(self.params):>10}",
                 f"  optimizer    {_gib(self.opt_state):>10}",
                 f"  gradients    {_gib(self.grads):>10}",
                 f"  activations  {_gib(self.activations):>10} (module outputs of one micro-batch)",
                 f"  analytic     {_gib(self.analytic_total):>10}"]
        if self.xla_total is not None:
            lines.append(f"  XLA          {_gib(self.xla_total):>10} (temporaries "
                         f"{_gib(self.xla['temp_size_in_bytes'])})")
        return "\n".join(lines)


def _activation_bytes(model, params_shapes, example, micro_batch: int) -> int:
    """Bytes of the intermediates a Linen module's forward keeps (0 for other models: the
    analytic estimate then has no activation term, and XLA's analysis of the step has it)."""
    model = getattr(model, "module", model)
    if not isinstance(model, nn.Module):
        return 0
    x = jax.ShapeDtypeStruct((micro_batch, *example.shape[1:]), example.dtype)

    def forward(params, inputs):
        return model.apply({"params": params}, inputs, train=True, capture_intermediates=True,
                           mutable=True, rngs={"dropout": jax.random.key(0)})[1]["intermediates"]

    try:
        captured = jax.eval_shape(forward, params_shapes, x)
    except Exception:  # noqa: BLE001 - a model with other mutable needs: no estimate, not a crash
        return 0
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(captured))


def plan(config: Config, *, compile_step: bool = True) -> Plan:
    from jaxmodels.training import loop  # the loop builds the same setup `train` would

    s = loop.setup(config)
    cfg = s.config
    state_shapes = jax.eval_shape(s.init_fn)
    r = s.parallel
    example = jnp.asarray(s.task.example_inputs)
    dp = mesh_lib.data_parallel_size(s.mesh)
    micro = max(1, cfg.data.batch_size // (dp * cfg.train.microbatches))
    activations = _activation_bytes(s.model, state_shapes.params, example, micro)
    xla = None
    if compile_step:
        batch = next(iter(s.task.train_batches(cfg.train.seed)))
        batch_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)
        stats = s.train_step.lower(state_shapes, batch_shapes).compile().memory_analysis()
        if stats is not None:
            xla = {k: int(getattr(stats, k)) for k in
                   ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                    "temp_size_in_bytes")}
    return Plan(dict(s.mesh.shape), r.params_bytes_per_device, r.opt_state_bytes_per_device,
                r.params_bytes_per_device, activations, xla,
                param_specs=_param_specs(state_shapes.params, s.state_sharding.params),
                preset=cfg.parallel.preset)


def _param_specs(shapes, shardings) -> dict:
    """{"path/to/param": (shape, PartitionSpec)} in the parameter tree's order."""
    out = {}
    flat, _ = jax.tree_util.tree_flatten_with_path(shapes)
    for (path, x), sharding in zip(flat, jax.tree.leaves(shardings), strict=True):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[name] = (tuple(x.shape), sharding.spec)
    return out


def check_budget(p: Plan, budget: int) -> None:
    """A one-line UserError naming the dominant term and the knob when `p` exceeds `budget`."""
    if p.total <= budget:
        return
    name, knob = p.dominant()
    raise UserError(f"needs {_gib(p.total)} per device, over the {_gib(budget)} budget; the largest "
                    f"term is {name}: try {knob}")


def device_memory(device) -> tuple[int | None, str]:
    """(bytes one device can hold, where that number comes from). Accelerators report their
    limit; on CPU the device is host memory: the smallest of physical RAM, the cgroup limit and
    the address-space rlimit. None when nothing says."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        pass
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory"
    import os
    import resource

    limits = []
    try:
        limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "host RAM"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            limits.append((int(text), "the cgroup memory limit"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
        limits.append((soft, "the address-space limit (ulimit -v)"))
    if not limits:
        return None, "unknown"
    return min(limits)


def check_fits(s) -> None:
    """Before anything is compiled or a batch is built: a one-line UserError, with `plan`'s
    naming of the largest term and its knob, when the analytic estimate of one training step
    (parameters, optimizer state, gradients, activations and, on CPU, the host's own copy of
    the batch) cannot fit the device's memory. The estimate is a lower bound (XLA keeps more
    temporaries), so a run it passes can still run out; the CLI then reports that as one line."""
    cfg = s.config
    state_shapes = jax.eval_shape(s.init_fn)
    example = jnp.asarray(s.task.example_inputs)
    dp = mesh_lib.data_parallel_size(s.mesh)
    micro = max(1, cfg.data.batch_size // (dp * cfg.train.microbatches))
    r = s.parallel
    p = Plan(dict(s.mesh.shape), r.params_bytes_per_device, r.opt_state_bytes_per_device,
             r.params_bytes_per_device, _activation_bytes(s.model, state_shapes.params, example, micro),
             None)
    device = s.mesh.devices.flat[0]
    budget, where = device_memory(device)
    if budget is None:
        return
    batch = cfg.data.batch_size * example.size * example.dtype.itemsize * 2  # inputs, targets...
    need = p.analytic_total + (batch if device.platform == "cpu" else batch // max(dp, 1))
    if need <= budget:
        return
    name, knob = p.dominant()
    if batch > p.analytic_total:
        name, knob = "the batch itself", "a smaller data.batch_size (or more devices)"
    raise UserError(f"one training step needs at least {_gib(need)} per device, over the "
                    f"{_gib(budget)} of {where}; the largest term is {name}: try {knob} "
                    f"(jaxmodels plan CONFIG shows the estimate)")
