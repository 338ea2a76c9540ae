"""Mixed precision, shared by every model family: a compute dtype separate from the parameter dtype.

`dtype` is what activations and matmul operands are computed in; `param_dtype` is what the
parameters (and so the optimizer's updates) are stored in. The usual mixed-precision setting is
`dtype="bfloat16", param_dtype="float32"`: bfloat16 matmuls, float32 master weights, so small
updates are not rounded away. Gradients come back in `param_dtype` (the transpose of the cast).

Two things stay float32 whatever `dtype` says, in every family:
  - the logits: the readout multiplies compute-dtype operands but accumulates and returns float32
    (`readout`), because the loss's log-softmax over bfloat16 logits would lose the differences
    between them;
  - an RNN's carried state (see rnn.py), because a recurrence adds its rounding error once per step.
"""

import dataclasses
import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Precision:
    """The two dtype fields every model config carries; they override as `model.dtype=bfloat16`."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def params_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.param_dtype)

    def precision_problems(self) -> list[tuple[str, str]]:
        # The command-line parser already checks the Literal; a config built in Python is not,
        # and jnp.dtype would accept "float16" or "int8" and fail much later (or not at all).
        return [(n, f"must be one of {', '.join(DTYPES)}, got {getattr(self, n)!r}")
                for n in ("dtype", "param_dtype") if getattr(self, n) not in DTYPES]


def float32_accumulate(dtype) -> dict:
    """Keyword arguments for nn.Dense/nn.Conv: compute in `dtype`, accumulate and return float32.

    Empty for float32 (the default dot_general is the same computation there)."""
    if jnp.dtype(dtype) == jnp.float32:
        return {}
    return {"dot_general": functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)}


def readout(features: int, axes: tuple[str, str], cfg: Precision, *, name: str,
            kernel_init=nn.initializers.lecun_normal()) -> nn.Dense:
    """The layer that produces logits: compute-dtype operands, float32 accumulation and output.

    Named like `layers.dense` ("kernel" (in, out) and "bias"), so checkpoints are unchanged."""
    return nn.Dense(
        features,
        dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
        name=name,
        **float32_accumulate(cfg.compute_dtype),
    )
