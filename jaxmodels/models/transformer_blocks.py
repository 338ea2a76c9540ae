"""The pieces every transformer is built from: the pre-norm block (x + Attn(Norm(x)), then
x + MLP(Norm(x))), the `Stack` of them ending in a final norm, and small shared helpers
(parameters with logical names, norms, the token embedding, input checks).

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); S key positions (a KV cache's buffer length); D model width (an
RNN's hidden state); H query heads; G key/value heads (G divides H); Dh head dim; F features other
than the model width (an MLP's hidden units, a flattened image, an RNN's per-step input); V
vocabulary; L layers; M longest sequence (max_len).

`scan_layers` compiles the block once and scans it over depth (parameters stacked on a leading
"layers" axis); unrolled and scanned are the same function of the same parameters, laid out
differently. Activations are computed in `dtype`, parameters stored in `param_dtype`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models import attention, layer_norm, layers
from jaxmodels.models.transformer_config import TransformerCore


def param(module: nn.Module, name: str, init, axes: tuple[str, ...], shape: tuple[int, ...]
          ) -> jax.Array:
    """A parameter named by logical `axes`, stored in the module's config.param_dtype."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                        jnp.dtype(module.config.param_dtype))


def norm(cfg: TransformerCore, name: str) -> nn.Module:
    """The config's norm (LayerNorm or RMSNorm) over D, its parameters named "embed"."""
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
    eps = {} if cfg.norm_eps is None else {"epsilon": cfg.norm_eps}
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(scale_init=scale_init, dtype=dtype, param_dtype=param_dtype, name=name, **eps)
    # flax.linen.LayerNorm's function and parameters, with one-pass row reductions that XLA's
    # CPU backend fuses itself (models/layer_norm.py says why and by how much).
    return layer_norm.LayerNorm(scale_init=scale_init, dtype=dtype, param_dtype=param_dtype, name=name,
                                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                                **eps)


class Mlp(nn.Module):
    """Position-wise MLP: gelu (D -> F -> D) or SwiGLU (silu(x Wg) * (x Wu), then -> D)."""

    config: TransformerCore

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        d, f = cfg.d_model, cfg.ff_width

        def weight(name, shape, axes):
            # Fan-in is the first axis (D or F) for every shape here, [D, 2, F] included.
            init = nn.initializers.lecun_normal(in_axis=0, out_axis=tuple(range(1, len(shape))))
            return param(self, name, init, axes, shape).astype(dtype)

        def biased(h, name, axis):
            # cfg.bias: a zero-initialised bias on the last axis (GPT-2's MLP has them).
            if not cfg.bias:
                return h
            b_F = param(self, name + "_bias", nn.initializers.zeros, (axis,), (h.shape[-1],))
            return h + b_F.astype(dtype)[None, None, :]

        x_BxTxD = x_BxTxD.astype(dtype)
        if cfg.mlp == "swiglu" and cfg.fused_projections:
            # One [D, 2, F] matmul for both input projections: gate first, then up.
            gate_up_BxTx2xF = layers.rows_dot(x_BxTxD, weight("gate_up", (d, 2, f), ("embed", None, "mlp")))
            h_BxTxF = nn.silu(gate_up_BxTx2xF[:, :, 0]) * gate_up_BxTx2xF[:, :, 1]
        elif cfg.mlp == "swiglu":
            up_BxTxF = layers.rows_dot(x_BxTxD, weight("up", (d, f), ("embed", "mlp")))
            gate_BxTxF = layers.rows_dot(x_BxTxD, weight("gate", (d, f), ("embed", "mlp")))
            h_BxTxF = nn.silu(gate_BxTxF) * up_BxTxF
        else:
            # flax's gelu is the tanh approximation (GPT-2's gelu_new).
            h_BxTxF = nn.gelu(biased(layers.rows_dot(x_BxTxD, weight("up", (d, f), ("embed", "mlp"))),
                                     "up", "mlp"))
        h_BxTxF = layers.constrain(h_BxTxF, ("act_batch", None, "act_mlp"))
        return biased(layers.rows_dot(h_BxTxF, weight("down", (f, d), ("mlp", "embed"))), "down", "embed")


class Block(nn.Module):
    """One pre-norm transformer block; returns (x, this layer's updated KV buffers or None).

    Positional arguments only, in the order nn.scan and nn.remat see them: the carry, the
    per-layer cache (scanned), then broadcast values; `causal` and `train` are Python bools
    (static under remat: see Stack).
    """

    config: TransformerCore

    @nn.compact
    def __call__(self, x_BxTxD, kv, positions_BxT, mask, index, causal: bool, train: bool):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout, deterministic=not train)
        h_BxTxD, kv = attention.Attention(cfg, name="attn")(
            norm(cfg, "attn_norm")(x_BxTxD), positions_BxT, mask=mask, causal=causal, kv=kv,
            index=index)
        x_BxTxD = layers.constrain(x_BxTxD + drop(h_BxTxD), ("act_batch", None, None))
        h_BxTxD = Mlp(cfg, name="mlp")(norm(cfg, "mlp_norm")(x_BxTxD))
        return layers.constrain(x_BxTxD + drop(h_BxTxD), ("act_batch", None, None)), kv


class Stack(nn.Module):
    """num_layers blocks, then the final norm. Returns (x_BxTxD, kv).

    `kv`, when given, is the pair (k, v) of every layer's buffers: stacked arrays [L, B, S, G, Dh]
    when scan_layers (the scan slices layer l off the leading axis), or tuples of L arrays
    [B, S, G, Dh] when unrolled (no copy of a stacked buffer per layer); `TransformerLM.init_cache`
    makes the one that matches the config, and the updated buffers come back in it.
    """

    config: TransformerCore

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, *, mask=None, causal=False, kv=None, index=None,
                 train=False):
        cfg = self.config
        block = Block
        if cfg.remat:
            # Arguments 6 and 7 (counting self) are the Python bools causal and train. CSE
            # prevention is only needed outside a scan, whose loop already stops XLA from
            # merging the recomputation back into the forward pass.
            block = nn.remat(Block, static_argnums=(6, 7), prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            scanned = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x_BxTxD, kv = scanned(cfg, name="blocks")(
                x_BxTxD, kv, positions_BxT, mask, index, causal, train)
        else:
            new_k, new_v = [], []
            for i in range(cfg.num_layers):
                layer_kv = None if kv is None else (kv[0][i], kv[1][i])
                x_BxTxD, layer_kv = block(cfg, name=f"block_{i}")(
                    x_BxTxD, layer_kv, positions_BxT, mask, index, causal, train)
                if layer_kv is not None:
                    new_k.append(layer_kv[0])
                    new_v.append(layer_kv[1])
            kv = None if kv is None else (tuple(new_k), tuple(new_v))
        return norm(cfg, "final_norm")(x_BxTxD), kv


def readout_init(cfg: TransformerCore):
    # muP zero-initialises a separate readout (Tensor Programs V): a random one's contribution
    # fades as 1/m behind the readout multiplier, so narrow and wide models would differ by it.
    return nn.initializers.lecun_normal() if cfg.parametrization == "standard" else nn.initializers.zeros


def token_embedding(cfg, name: str) -> nn.Embed:
    # GPT-2's scale: with tied embeddings, unit-variance rows would make the initial logits grow
    # like sqrt(D).
    return nn.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype), name=name,
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                                                ("vocab", "embed")))


def check_vocab(cfg) -> None:
    if cfg.vocab_size is None:
        raise ValueError(f"{type(cfg).__name__}.vocab_size is None: set model.vocab_size, or let the "
                         "training loop fill it in from the tokenizer")


def check_length(cfg, length: int) -> None:
    if length > cfg.max_len:
        raise ValueError(f"sequence of {length} positions is longer than model.max_len={cfg.max_len}")


def positions_row(length: int) -> jax.Array:
    """[1, T]: one row shared by the batch."""
    return jnp.arange(length, dtype=jnp.int32)[None, :]
