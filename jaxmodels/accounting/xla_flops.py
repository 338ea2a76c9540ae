"""Training FLOPs of any model, read from XLA's cost analysis of its compiled train step.

    xf = xla_flops.train_flops_per_example(train_step, state, batch, batch_size=64)
    xf.per_example            # None when the backend gives no count; xf.reason says why
    hardware.mfu(xf.model_flops_per_example * examples, seconds, n_devices, peak)

For models without an analytic formula (`flops.account` knows the 8 built-in configs only): a
user's Linen or NNX module, or a pure init/apply pair. The count is what XLA sees in the optimised
program, so it differs from the analytic model-FLOP convention in known ways (measured in
tests/test_flops.py and benchmarks/flops_vs_xla.py):

- it adds elementwise work (norms, activations, softmax, the loss, the optimizer update), a few
  per cent for matmul-dominated models;
- it computes causal attention's full T x T square, and remat's recomputation (so it is closer to
  hardware FLOPs than to model FLOPs; for MFU of a model without a formula it is the best there is);
- it skips a 'same' convolution's multiply-adds on zero padding;
- it counts a while loop's body once: scanned layers, RNN time steps and gradient-accumulation
  micro-batches are undercounted. `while_loops` says how many loops with matrix products the
  program has (from its HLO text), and `reason` carries the caveat, so a caller can tell a lower
  bound from a count.

Sharded programs: XLA analyses the per-device program, so the count is scaled by the number of
devices the program runs on (read from the compiled executable's input shardings). Work that is
replicated rather than split (an optimizer update under data parallelism) is then counted once per
device, which is small next to the matmuls it accompanies.
"""

from __future__ import annotations

import dataclasses
import re

import jax


@dataclasses.dataclass(frozen=True)
class XlaFlops:
    """XLA's training FLOPs of one step, per example; `per_example` None with a `reason` when the
    backend gives none. The property names match `flops.Accounting`, so MFU code takes either."""

    per_example: float | None
    per_step: float | None  # all devices together
    devices: int
    while_loops: int  # loops whose bodies do matrix products (each counted once by XLA)
    reason: str | None  # why per_example is None, or what makes it a lower bound

    @property
    def model_flops_per_example(self) -> float | None:
        return self.per_example

    @property
    def hardware_flops_per_example(self) -> float | None:
        # XLA counts what runs, remat's recomputation included: there is no separate figure.
        return self.per_example

    @property
    def source(self) -> str:  # summary.json's flops_source
        return "xla"

    @property
    def non_embedding_params(self) -> None:
        # XLA sees operations, not which tables are looked up rather than multiplied.
        return None


def cost_analysis_flops(compiled) -> tuple[float | None, str | None]:
    """(FLOPs, None) from `compiled.cost_analysis()`, or (None, why). JAX 0.4.30 and later return
    one dict; older versions a list with one dict per program (summed here)."""
    try:
        analysis = compiled.cost_analysis()
    except Exception as e:  # noqa: BLE001 -- some backends raise rather than return nothing
        return None, f"cost_analysis() raised {type(e).__name__}: {e}"
    if isinstance(analysis, dict):
        analysis = [analysis]
    if not analysis:
        return None, "cost_analysis() returned nothing on this backend"
    counts = [a.get("flops") for a in analysis if isinstance(a, dict)]
    if not counts or any(c is None for c in counts):
        return None, "cost_analysis() has no 'flops' entry on this backend"
    total = float(sum(counts))
    if total < 0:  # XLA's "unknown" on some backends
        return None, "cost_analysis() reported an unknown FLOP count"
    return total, None


def _devices(compiled) -> int:
    try:
        shardings = jax.tree.leaves(compiled.input_shardings)
    except Exception:  # noqa: BLE001 -- a stand-in object without shardings: one device
        return 1
    return max((len(s.device_set) for s in shardings if hasattr(s, "device_set")), default=1)


_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*[({]", re.M)
_CALLED = re.compile(r"(?:calls|to_apply|body|condition|branch_computations|true_computation|"
                     r"false_computation)=\{?([^,}\s]+(?:,\s*%[\w.\-]+)*)")
_WHILE_BODY = re.compile(r"\bwhile\(.*?\bbody=%?([\w.\-]+)")
# What XLA counts as matmul work: dots and convolutions, or the library calls GPUs lower them to.
_MATMUL = re.compile(r"\b(?:dot|convolution)\(|__cublas\$|gemm", re.I)


def _computations(text: str) -> dict[str, str]:
    """HLO text split into {computation name: its instructions}."""
    out, name, lines = {}, None, []
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = _COMPUTATION.match(line)
            name, lines = (m.group(1) if m else None), []
        elif line.startswith("}") and name is not None:
            out[name] = "\n".join(lines)
            name = None
        elif name is not None:
            lines.append(line)
    return out


def _has_matmul(name: str, comps: dict[str, str], seen: set[str]) -> bool:
    if name in seen or name not in comps:
        return False
    seen.add(name)
    body = comps[name]
    if _MATMUL.search(body):
        return True
    called = [c.strip().lstrip("%") for m in _CALLED.finditer(body) for c in m.group(1).split(",")]
    return any(_has_matmul(c, comps, seen) for c in called)


def _matmul_loops(compiled) -> int:
    """While loops of the optimised program whose bodies do matrix products (scanned layers, RNN
    time steps, micro-batches). Loops without any (random-bit generation, for one) are left out:
    counting their bodies once costs a few elementwise FLOPs, not a lower bound."""
    try:
        text = compiled.as_text() or ""
    except Exception:  # noqa: BLE001 -- a stand-in object without HLO text
        return 0
    comps = _computations(text)
    return sum(_has_matmul(m.group(1), comps, set()) for m in _WHILE_BODY.finditer(text))


def train_flops_per_example(step, *args, batch_size: int, microbatches: int = 1) -> XlaFlops:
    """XLA's training FLOPs per example of `step`.

    step: a jitted train step (then `args` are its example arguments: arrays or
    `jax.ShapeDtypeStruct`s, with shardings where the real call has them; it is lowered and
    compiled, never run), a `.lower(...)` result, or a `.lower(...).compile()` result (then no
    args). batch_size: examples in one call of the step. With gradient accumulation over
    `microbatches` slices XLA sees one slice in the loop body, so the count is per slice and is
    divided by batch_size / microbatches.
    """
    if batch_size <= 0 or microbatches <= 0 or batch_size % microbatches:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of "
                         f"microbatches={microbatches}")
    compiled = step
    if hasattr(compiled, "lower"):  # jitted
        compiled = compiled.lower(*args)
    elif args:
        raise TypeError("pass example arguments only with a jitted step, not a lowered or compiled one")
    if hasattr(compiled, "compile"):  # lowered (its own cost_analysis is of the unoptimised HLO)
        compiled = compiled.compile()
    flops, reason = cost_analysis_flops(compiled)
    devices, loops = _devices(compiled), _matmul_loops(compiled)
    if flops is None:
        return XlaFlops(None, None, devices, loops, reason)
    per_example = flops * devices / (batch_size // microbatches)
    if loops:
        reason = (f"lower bound: the program has {loops} while loop(s) doing matrix products "
                  f"(scanned layers, RNN time steps, micro-batches), whose bodies XLA counts once")
    return XlaFlops(per_example, per_example * batch_size, devices, loops, reason)
