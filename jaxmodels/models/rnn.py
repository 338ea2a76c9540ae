"""Recurrent networks: Elman, LSTM and GRU cells, stacked, as a language model and a classifier.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); D model width (an RNN's hidden state); F features other than the
model width (an MLP's hidden units, a flattened image, an RNN's per-step input); U an RNN's fused
gate units (num_gates x D); V vocabulary; E token embedding width; K classes; L layers; Hi image
height; Wi image width; C channels.

Every parameter carries logical axis names: "embed" for whatever feeds a matmul
(input features, embeddings, the hidden state), "mlp" for gate units, "vocab" and "classes" for
the heads. A rules table in the parallel layer maps them to mesh axes.

How a layer runs. An `nn.scan` over time-major steps; each step makes the input half of every
gate (x_t x [F, U], one fused matmul for all gates) and the hidden half (h_{t-1} x [D, U]), then
the cell's update. A stack runs layer by layer, each over the whole sequence. (Making the input
half for all steps at once before the loop, one [B*T, F] x [F, U] matmul, was 1.5x slower per
training step on CPU: see RNNLayer.)

Gate layout of the fused [., U] matrices (PyTorch's, so weights port by slicing):
  Elman  U = D:   h' = tanh(x Wi + b + h Wh)
  LSTM   U = 4D:  i, f, g, o;  c' = s(f) c + s(i) tanh(g),  h' = s(o) tanh(c')
  GRU    U = 3D:  r, z, n;     r = s(x Wir + br + h Whr),  z = s(x Wiz + bz + h Whz)
                              n = tanh(x Win + bn + r (h Whn + bhn)),  h' = (1 - z) n + z h
where s is the logistic sigmoid. The GRU is the PyTorch/cuDNN variant: the reset gate scales
h Whn + bhn *after* the hidden matmul (the original Cho et al. GRU computes (r h) Whn), so one
hidden matmul yields all three gates at once. PyTorch's separate hidden biases for r and z add to
the input biases and are folded into them here; only bhn, which r multiplies, is kept.

The carry is explicit: a tuple over layers of each cell's state, (c, h) for an LSTM and h for
Elman and GRU, each [B, D]. `carry=None` means zeros. The LSTM's forget-gate bias starts at 1
(Jozefowicz et al., 2015) so that early in training the cell keeps its state rather than
forgetting it every step.

Mixed precision (`model.dtype`, models/precision.py). The matmuls (the per-step input
projection and h_{t-1} x [D, U]) take compute-dtype operands and accumulate in float32; the gate
nonlinearities and the state update run in float32, and the carry (c and h) stays float32 whatever
the dtype. A bfloat16 carry would add a relative rounding error of 2^-8 to the state at every
step, and the LSTM's cell state is a running sum c' = f c + i g whose small increments bfloat16
would round away once |c| is large; float32 state costs [B, D] per layer, which is nothing next
to the [B, T, U] activations. Each layer's output sequence (what the next layer and the head
read, and what backpropagation keeps) is in the compute dtype; the logits are float32.
"""

import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models import layers, precision

# A tuple over layers of each cell's state: (c_BxD, h_BxD) for an LSTM, h_BxD otherwise.
Carry = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class RNNCore(precision.Precision):
    """The recurrent core shared by every RNN model: the fields override as `model.hidden=...`."""

    cell: Literal["elman", "lstm", "gru"] = "lstm"
    hidden: int = 256
    num_layers: int = 1
    # On the output of every layer (so also before the head), in training only. The recurrent
    # connection is never dropped: only the non-recurrent ones (Zaremba et al., 2014).
    dropout: float = 0.0

    def problems(self):
        out = layers.positive(self, "hidden", "num_layers")
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        return out + self.precision_problems()


@dataclasses.dataclass(frozen=True)
class RNNLMConfig(RNNCore):
    """A next-token language model: embedding, recurrent stack, vocabulary head."""

    kind = "rnn_lm"
    # None until the training loop fills it in from the tokenizer.
    vocab_size: int | None = None
    embed_dim: int = 64

    def problems(self):
        out = super().problems() + layers.positive(self, "embed_dim")
        if self.vocab_size is not None and self.vocab_size <= 0:
            out.append(("vocab_size", f"must be positive or none, got {self.vocab_size}"))
        return out


@dataclasses.dataclass(frozen=True)
class RNNClassifierConfig(RNNCore):
    """A sequence classifier; images are read row by row (MNIST: 28 steps of 28 pixels)."""

    kind = "rnn_classifier"
    num_classes: int = 10

    def problems(self):
        return super().problems() + layers.positive(self, "num_classes")


# ---------------------------------------------------------------------------------------------
# Cells: one time step, given the input half of the gates already computed.


def _orthogonal_per_gate(key, shape, dtype=jnp.float32):
    """A [D, n*D] recurrent kernel made of n independent orthogonal [D, D] blocks.

    One orthogonal init of the whole fused matrix would make its rows orthonormal but leave each
    gate's own [D, D] map shrinking the state; per block, every gate starts norm-preserving.
    """
    d, g = shape
    keys = jax.random.split(key, g // d)
    return jnp.concatenate([nn.initializers.orthogonal()(k, (d, d), dtype) for k in keys], axis=-1)


def _lstm_bias(key, shape, dtype=jnp.float32):
    """Zero gate biases except the forget gate's (the second of i, f, g, o), which is 1."""
    del key
    d = shape[-1] // 4
    return jnp.zeros(shape, dtype).at[d:2 * d].set(1.0)


def _input_gates(cfg: RNNCore, x_BxF: jax.Array, w_FxU: jax.Array, b_U: jax.Array) -> jax.Array:
    """x_t x the input kernel + bias, in the compute dtype (as a Dense layer gives it)."""
    dt = cfg.compute_dtype
    return jnp.dot(x_BxF.astype(dt), w_FxU.astype(dt)) + b_U.astype(dt)[None, :]


def _hidden_gates(module: nn.Module, h_BxD: jax.Array) -> jax.Array:
    """h_{t-1} x the fused recurrent kernel [D, U]: compute-dtype operands, float32 result."""
    cfg = module.config
    d = cfg.hidden
    init = nn.with_logical_partitioning(_orthogonal_per_gate, ("embed", "mlp"))
    w_DxU = module.param("kernel", init, (d, module.num_gates * d), cfg.params_dtype)
    return jnp.dot(h_BxD.astype(cfg.compute_dtype), w_DxU.astype(cfg.compute_dtype),
                   preferred_element_type=jnp.float32)


class ElmanCell(nn.Module):
    """The vanilla (Elman) cell: h' = tanh(x Wi + b + h Wh). Carry: h_BxD."""

    config: RNNCore
    num_gates = 1
    input_bias_init = staticmethod(nn.initializers.zeros)

    @nn.compact
    def __call__(self, h_BxD: jax.Array, x_BxF: jax.Array, w_FxU: jax.Array, b_U: jax.Array):
        xg_BxU = _input_gates(self.config, x_BxF, w_FxU, b_U)
        h_BxD = jnp.tanh(xg_BxU.astype(jnp.float32) + _hidden_gates(self, h_BxD))
        return h_BxD, h_BxD.astype(self.config.compute_dtype)

    @staticmethod
    def zeros(batch_size: int, hidden: int):
        return jnp.zeros((batch_size, hidden), jnp.float32)


class LSTMCell(nn.Module):
    """The LSTM cell (no peepholes), gates i, f, g, o. Carry: (c_BxD, h_BxD)."""

    config: RNNCore
    num_gates = 4
    input_bias_init = staticmethod(_lstm_bias)

    @nn.compact
    def __call__(self, carry, x_BxF: jax.Array, w_FxU: jax.Array, b_U: jax.Array):
        c_BxD, h_BxD = carry
        xg_BxU = _input_gates(self.config, x_BxF, w_FxU, b_U)
        z_BxU = xg_BxU.astype(jnp.float32) + _hidden_gates(self, h_BxD)
        i, f, g, o = jnp.split(z_BxU, 4, axis=-1)
        c_BxD = jax.nn.sigmoid(f) * c_BxD + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_BxD = jax.nn.sigmoid(o) * jnp.tanh(c_BxD)
        return (c_BxD, h_BxD), h_BxD.astype(self.config.compute_dtype)

    @staticmethod
    def zeros(batch_size: int, hidden: int):
        return (jnp.zeros((batch_size, hidden), jnp.float32),) * 2


class GRUCell(nn.Module):
    """The GRU cell, PyTorch/cuDNN variant (reset after the hidden matmul), gates r, z, n.
    Carry: h_BxD."""

    config: RNNCore
    num_gates = 3
    input_bias_init = staticmethod(nn.initializers.zeros)

    @nn.compact
    def __call__(self, h_BxD: jax.Array, x_BxF: jax.Array, w_FxU: jax.Array, b_U: jax.Array):
        xg_BxU = _input_gates(self.config, x_BxF, w_FxU, b_U)
        hg_BxU = _hidden_gates(self, h_BxD)
        # The one hidden bias that is not redundant with the input bias: r multiplies it.
        bhn_D = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                           (self.config.hidden,), self.config.params_dtype).astype(jnp.float32)
        xr, xz, xn = jnp.split(xg_BxU.astype(jnp.float32), 3, axis=-1)
        hr, hz, hn = jnp.split(hg_BxU, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * (hn + bhn_D[None, :]))
        h_BxD = (1.0 - z) * n + z * h_BxD
        return h_BxD, h_BxD.astype(self.config.compute_dtype)

    @staticmethod
    def zeros(batch_size: int, hidden: int):
        return jnp.zeros((batch_size, hidden), jnp.float32)


CELLS: dict[str, type[nn.Module]] = {"elman": ElmanCell, "lstm": LSTMCell, "gru": GRUCell}


def zero_carry(config: RNNCore, batch_size: int) -> Carry:
    """The all-zeros carry: a tuple over layers of each cell's state, each array [B, D]."""
    cell = CELLS[config.cell]
    return tuple(cell.zeros(batch_size, config.hidden) for _ in range(config.num_layers))


# ---------------------------------------------------------------------------------------------
# Layers and the stack: whole sequences.


class InputProjection(nn.Module):
    """The input half of a layer's gates, [F, U] kernel and [U] bias: the parameters a Dense layer
    named "input" would have (same names, initialisers and logical axes), returned rather than
    applied, so the scan applies them one time step at a time."""

    config: RNNCore
    num_gates: int
    bias_init: Any

    @nn.compact
    def __call__(self, features: int):
        cfg = self.config
        units = self.num_gates * cfg.hidden
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("embed", "mlp")), (features, units), cfg.params_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, ("mlp",)),
                          (units,), cfg.params_dtype)
        return kernel, bias


class RNNLayer(nn.Module):
    """One recurrent layer over a sequence: (carry, x_BxTxF) -> (carry, h_BxTxD)."""

    config: RNNCore

    @nn.compact
    def __call__(self, carry, x_BxTxF: jax.Array):
        cfg = self.config
        cell = CELLS[cfg.cell]
        w_FxU, b_U = InputProjection(cfg, cell.num_gates, cell.input_bias_init, name="input")(
            x_BxTxF.shape[-1])
        # Both halves of the gates inside the scan, one time step at a time, on time-major
        # sequences. Hoisting the input half out of the loop (one [B*T, F] x [F, U] matmul)
        # was slower on CPU with jaxlib 0.10 (LSTM 1x256, batch 32, ctx 64: 45-48 ms per training
        # step hoisted, 29-30 ms here; a 2-layer GRU 66-68 -> 57 ms): the per-step dots run at
        # the same rate either way, while the hoisted [T, B, U] gate inputs (U = 4 D for the
        # LSTM, the largest array of the layer) cost a transposing copy into the loop and, in the
        # backward pass, a zeroed [T, B, U] cotangent written step by step. Per step the loop
        # now reads only the [B, F] input.
        scan = nn.scan(cell, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=(0, nn.broadcast, nn.broadcast), out_axes=0)
        carry, h_TxBxD = scan(cfg, name="recurrent")(carry, jnp.swapaxes(x_BxTxF, 0, 1), w_FxU, b_U)
        return carry, jnp.swapaxes(h_TxBxD, 0, 1)


class RNNStack(nn.Module):
    """`num_layers` recurrent layers: (x_BxTxF, carry) -> (h_BxTxD of the last layer, carry)."""

    config: RNNCore

    @nn.compact
    def __call__(self, x_BxTxF: jax.Array, carry: Carry | None = None, *, train: bool = False):
        cfg = self.config
        if carry is None:
            carry = zero_carry(cfg, x_BxTxF.shape[0])
        if len(carry) != cfg.num_layers:
            raise ValueError(f"carry holds {len(carry)} layers, the model has {cfg.num_layers}")
        final = []
        h_BxTxD = x_BxTxF
        for layer in range(cfg.num_layers):
            layer_carry, h_BxTxD = RNNLayer(cfg, name=f"layer_{layer}")(carry[layer], h_BxTxD)
            final.append(layer_carry)
            # Independent masks per step: it only touches the non-recurrent path.
            h_BxTxD = nn.Dropout(cfg.dropout, deterministic=not train)(h_BxTxD)
        return h_BxTxD, tuple(final)


# ---------------------------------------------------------------------------------------------
# Models.


class RNNLM(nn.Module):
    """Next-token language model: tokens_BxT -> logits_BxTxV (float32).

    Decoding shares the Transformer LM's interface; here the cache is the carry plus the number
    of tokens processed so far: {"carry": Carry, "index": int32 scalar}.
    """

    config: RNNLMConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, *, train: bool = False, carry: Carry | None = None,
                 return_carry: bool = False):
        cfg = self.config
        if cfg.vocab_size is None:
            raise ValueError("RNNLMConfig.vocab_size is None: set model.vocab_size (the training "
                             "loop fills it from the tokenizer)")
        x_BxTxE = nn.Embed(
            cfg.vocab_size, cfg.embed_dim,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            dtype=cfg.compute_dtype,
            param_dtype=cfg.params_dtype,
            name="embed",
        )(tokens_BxT)
        h_BxTxD, carry = RNNStack(cfg, name="rnn")(x_BxTxE, carry, train=train)
        logits_BxTxV = precision.readout(cfg.vocab_size, ("embed", "vocab"), cfg, name="head")(h_BxTxD)
        return (logits_BxTxV, carry) if return_carry else logits_BxTxV

    def init_cache(self, batch_size: int, max_len: int) -> dict[str, Any]:
        """An empty cache. `max_len` is unused: a recurrent state does not grow with the sequence."""
        del max_len
        return {"carry": zero_carry(self.config, batch_size), "index": jnp.zeros((), jnp.int32)}

    def decode(self, tokens_BxT: jax.Array, cache: dict[str, Any]):
        """Continues from `cache` over `tokens_BxT` (a prompt or one new token):
        (logits_BxTxV, cache). Equal to running `__call__` over everything seen so far."""
        logits_BxTxV, carry = self(tokens_BxT, carry=cache["carry"], return_carry=True)
        return logits_BxTxV, {"carry": carry, "index": cache["index"] + tokens_BxT.shape[1]}


class RNNClassifier(nn.Module):
    """Classifies a sequence x_BxTxF, or images x_BxHixWixC read row by row (T = H, F = W*C), from
    the last layer's final hidden state: logits_BxK."""

    config: RNNClassifierConfig

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool = False, carry: Carry | None = None,
                 return_carry: bool = False):
        cfg = self.config
        if inputs.ndim == 4:
            b, h, w, c = inputs.shape
            x_BxTxF = inputs.reshape(b, h, w * c)
        elif inputs.ndim == 3:
            x_BxTxF = inputs
        else:
            raise ValueError(f"expected a sequence [B, T, F] or images [B, H, W, C], got shape {inputs.shape}")
        h_BxTxD, carry = RNNStack(cfg, name="rnn")(x_BxTxF.astype(cfg.compute_dtype), carry, train=train)
        # h at the last step is the final hidden state (after the last layer's dropout).
        logits_BxK = precision.readout(cfg.num_classes, ("embed", "classes"), cfg, name="head")(h_BxTxD[:, -1])
        return (logits_BxK, carry) if return_carry else logits_BxK
