"""Multi-head, grouped-query and multi-query self-attention, with an optional explicit KV cache.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); S key positions (a KV cache's buffer length); D model width (an
RNN's hidden state); H query heads; G key/value heads (G divides H); N heads of either kind (H or
G); R query heads per key/value head (H/G); Dh head dim.

G == H is multi-head attention, G == 1 multi-query. Logical axis names: "embed" (D), "heads" (H),
"kv" (G), "head_dim" (Dh).

The softmax(QK^T/sqrt(Dh))V (under muP, QK^T times `config.attention_scale`) itself is, by
`config.attention`, `jax.nn.dot_product_attention` ("jax": accelerators get their fused kernels;
`implementation=None` picks XLA today, cuDNN where it applies), or the einsum and blocked causal
forms of attention_ops.py, which are faster on CPU; "auto" (the default) takes the blocked form
with its hand-written backward on CPU and "jax" on any other backend. All take K/V with fewer
heads than Q and group the query heads themselves, so grouped-query attention never
materialises repeated K/V; all compute the logits and the softmax in float32 whatever the
input dtype. None has dropout on
attention probabilities, so the blocks drop residual branches only.

Projections: separate "query" [D, H, Dh], "key" and "value" [D, G, Dh] parameters, or with
`config.fused_projections` one "qkv" [D, G, H/G + 2, Dh] (logical axes "embed", "kv", None,
"head_dim"): for each key/value head, its H/G query heads, then its key, then its value. Grouping
by key/value head keeps a tensor-parallel split along "kv" whole: every device holds the queries,
keys and values of the same heads, as the separate layout does when "heads" and "kv" split alike.
"""

from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models import attention_ops, layers, positional

if TYPE_CHECKING:  # the config lives with the models; importing it here would be circular
    from jaxmodels.models.transformer_config import TransformerCore

# One layer's cache: (k_BxSxGxDh, v_BxSxGxDh), S the buffer length.
LayerKV = tuple[jax.Array, jax.Array]


def causal_mask_over_buffer(query_positions_T: jax.Array, buffer_len: int) -> jax.Array:
    """bool [1, 1, T, S]: query t may see buffer slot s iff s <= its position.

    `is_causal=True` cannot express this: it aligns the triangle at the top-left corner, i.e.
    assumes the queries start at position 0. Slots past the filled part are excluded for free
    because their index exceeds every query position.
    """
    s_S = jnp.arange(buffer_len, dtype=jnp.int32)
    return (s_S[None, :] <= query_positions_T[:, None])[None, None]


class Attention(nn.Module):
    """Self-attention of x_BxTxD at positions_BxT; returns (y_BxTxD, kv).

    Without a cache (`kv=None`) the keys are x's own positions, masked by `mask` (bool,
    broadcastable to [B, H, T, T], True = may attend) and/or `causal`. With a cache, this call's
    keys and values are written into the buffers at slot `index` (dynamic_update_slice: `index`
    may be traced), attention runs over the whole buffer under `mask`, and the updated buffers are
    returned. The buffers must have room: a write past the end is clamped by XLA, not reported.
    """

    config: "TransformerCore"

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, *, mask: jax.Array | None = None,
                 causal: bool = False, kv: LayerKV | None = None, index: jax.Array | None = None
                 ) -> tuple[jax.Array, LayerKV | None]:
        cfg = self.config
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        d, h, k, dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim

        def project(name: str, heads: int, heads_axis: str) -> jax.Array:
            # fan-in is D: the (heads, head_dim) pair together is the output axis.
            init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
            w_DxNxDh = self.param(name, nn.with_logical_partitioning(init, ("embed", heads_axis, "head_dim")),
                                  (d, heads, dh), param_dtype)
            y_BxTxNxDh = layers.rows_dot(x_BxTxD.astype(dtype), w_DxNxDh.astype(dtype))
            if cfg.bias:  # GPT-2's projections have biases
                b_NxDh = self.param(name + "_bias", nn.with_logical_partitioning(
                    nn.initializers.zeros, (heads_axis, "head_dim")), (heads, dh), param_dtype)
                y_BxTxNxDh = y_BxTxNxDh + b_NxDh.astype(dtype)[None, None]
            return y_BxTxNxDh

        if cfg.fused_projections:
            init = nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2, 3))
            w_DxGxRxDh = self.param("qkv", nn.with_logical_partitioning(init, ("embed", "kv", None, "head_dim")),
                                    (d, k, h // k + 2, dh), param_dtype)
            qkv_BxTxGxRxDh = layers.rows_dot(x_BxTxD.astype(dtype), w_DxGxRxDh.astype(dtype))
            if cfg.bias:
                b_GxRxDh = self.param("qkv_bias", nn.with_logical_partitioning(
                    nn.initializers.zeros, ("kv", None, "head_dim")), (k, h // k + 2, dh), param_dtype)
                qkv_BxTxGxRxDh = qkv_BxTxGxRxDh + b_GxRxDh.astype(dtype)[None, None]
            b, t = x_BxTxD.shape[:2]
            q_BxTxHxDh = qkv_BxTxGxRxDh[:, :, :, :-2].reshape(b, t, h, dh)
            k_BxTxGxDh, v_BxTxGxDh = qkv_BxTxGxRxDh[:, :, :, -2], qkv_BxTxGxRxDh[:, :, :, -1]
        else:
            q_BxTxHxDh = project("query", h, "heads")
            k_BxTxGxDh = project("key", k, "kv")
            v_BxTxGxDh = project("value", k, "kv")
        if cfg.positional == "rope":
            q_BxTxHxDh = positional.rope(q_BxTxHxDh, positions_BxT, cfg.rope_base)
            k_BxTxGxDh = positional.rope(k_BxTxGxDh, positions_BxT, cfg.rope_base)

        if kv is not None:
            k_cache, v_cache = kv
            start = (0, index, 0, 0)
            k_cache = jax.lax.dynamic_update_slice(k_cache, k_BxTxGxDh.astype(k_cache.dtype), start)
            v_cache = jax.lax.dynamic_update_slice(v_cache, v_BxTxGxDh.astype(v_cache.dtype), start)
            kv = (k_cache, v_cache)
            k_BxSxGxDh, v_BxSxGxDh = k_cache.astype(dtype), v_cache.astype(dtype)
        else:
            k_BxSxGxDh, v_BxSxGxDh = k_BxTxGxDh, v_BxTxGxDh

        impl = cfg.attention_impl if kv is None else None
        if impl == "cudnn" and jax.default_backend() != "gpu":
            raise ValueError(f"model.attention_impl=cudnn needs an NVIDIA GPU, but JAX runs on "
                             f"{jax.default_backend()}: set model.attention_impl=none")
        q_BxTxHxDh = layers.constrain(q_BxTxHxDh, ("act_batch", None, "act_heads", None))
        attention = cfg.attention
        if attention == "auto":
            # The einsum forms with the hand-written backward were the fastest on CPU for every
            # shape measured (benchmarks/transformer_levers.py); elsewhere, or when a kernel was
            # asked for by name, jax.nn.dot_product_attention can reach fused kernels.
            attention = "blocked_vjp" if jax.default_backend() == "cpu" and impl is None else "jax"
        if attention == "jax":
            out_BxTxHxDh = jax.nn.dot_product_attention(
                q_BxTxHxDh, k_BxSxGxDh, v_BxSxGxDh, mask=mask, is_causal=causal,
                scale=cfg.attention_scale, implementation=impl)
        elif attention.startswith("blocked") and causal and kv is None:
            out_BxTxHxDh = attention_ops.blocked_causal_attention(
                q_BxTxHxDh, k_BxSxGxDh, v_BxSxGxDh, mask=mask, scale=cfg.attention_scale,
                block=cfg.attention_block, manual_vjp=attention.endswith("_vjp"))
        else:
            out_BxTxHxDh = attention_ops.einsum_attention(
                q_BxTxHxDh, k_BxSxGxDh, v_BxSxGxDh, mask=mask, causal=causal,
                scale=cfg.attention_scale, manual_vjp=attention.endswith("_vjp"))
        out_BxTxHxDh = layers.constrain(out_BxTxHxDh, ("act_batch", None, "act_heads", None))

        init = nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        w_HxDhxD = self.param("out", nn.with_logical_partitioning(init, ("heads", "head_dim", "embed")),
                              (h, dh, d), param_dtype)
        y_BxTxD = layers.rows_dot(out_BxTxHxDh, w_HxDhxD.astype(dtype), contract=2)
        if cfg.bias:
            b_D = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                             (d,), param_dtype)
            y_BxTxD = y_BxTxD + b_D.astype(dtype)[None, None]
        return y_BxTxD, kv
