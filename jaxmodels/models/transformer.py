"""Transformers: a decoder-only language model, a text classifier and a Vision Transformer.

Shapes are written as suffixes: B batch, T/S sequence (queries/keys), D model width, H query
heads, K key/value heads, Dh head dim, F MLP width, V vocab, L layers, N classes, M the longest
supported sequence (max_len); images are B, Hi, Wi, C with P patches of Q = patch*patch*C values.
Every parameter carries logical axis names ("embed", "mlp", "heads", "kv", "head_dim", "vocab",
"max_len", "patch", "classes", and "layers" for the depth axis of scanned blocks); a rules table
in the parallel layer maps them to mesh axes, so this file never mentions a device mesh.

All three share one pre-norm block (x + Attn(Norm(x)), then x + MLP(Norm(x))) and one `Stack`
of them ending in a final norm. `scan_layers` compiles the block once and scans it over depth
(parameters stacked on a leading "layers" axis); unrolled and scanned are the same function of
the same parameters, laid out differently. Activations are computed in `dtype`, parameters
stored in `param_dtype`; logits are always returned in float32.

The language model decodes through an explicit KV cache (`init_cache`, `decode`): a pure value
passed in and returned, never a mutable collection hidden in the module.
"""

import dataclasses
from typing import Literal

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models import attention, layers, positional


@dataclasses.dataclass(frozen=True)
class TransformerCore:
    """The fields every transformer shares; they override flat, as `model.num_layers=6`."""

    num_layers: int = 4
    num_heads: int = 4
    # None: as many as num_heads (multi-head). Fewer: grouped-query attention (1: multi-query).
    num_kv_heads: int | None = None
    d_model: int = 128
    # None: 4 * d_model for gelu; for swiglu the multiple of 8 at or above 8/3 * d_model, which
    # keeps the parameter count of the three-matrix MLP equal to gelu's two (Shazeer, 2020).
    d_ff: int | None = None
    # On the embeddings and on each residual branch, in training only.
    dropout: float = 0.0
    # The longest sequence (and KV cache) the positional encoding supports.
    max_len: int = 256
    positional: Literal["sinusoidal", "learned", "rope"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    # One compiled block scanned over depth: compile time independent of num_layers.
    scan_layers: bool = False
    # Recompute each block's activations in the backward pass: memory for FLOPs.
    remat: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    # "mup": maximal update parametrization for Adam-family optimizers (Yang et al., 2022): the
    # readout sees its input times base_width/d_model (and starts at zero unless tied to the
    # embedding), attention logits are q.k/Dh (times a constant that makes them q.k/sqrt(Dh) at
    # base width) instead of q.k/sqrt(Dh), and hidden matrices train at the learning rate times
    # base_width/d_model (training/mup.py). At d_model == base_width the same function of the
    # same parameters as "standard", trained the same way; only a separate readout's zero init
    # differs. The width is d_model; the MLP width (4 d_model, or d_ff scaled along) and the
    # head dim grow with it, the number of heads is fixed.
    parametrization: Literal["standard", "mup"] = "standard"
    base_width: int = 128

    # Logical axes whose size grows with the width (see parametrization); "heads", "kv",
    # "vocab", "max_len", "patch" and "classes" do not.
    width_axes = frozenset({"embed", "mlp", "head_dim"})

    @property
    def width(self) -> int:
        return self.d_model

    @property
    def width_multiplier(self) -> float:
        return self.d_model / self.base_width

    @property
    def readout_scale(self) -> float | None:
        """muP's factor on the readout's input (base_width / d_model); None under standard."""
        return self.base_width / self.d_model if self.parametrization == "mup" else None

    @property
    def attention_scale(self) -> float | None:
        """The factor on q.k: None (1/sqrt(Dh), the default) under standard; under muP
        sqrt(Dh0)/Dh with Dh0 = base_width/num_heads the head dim at base width, so logits
        stay O(1) when q and k become correlated in training (which 1/sqrt(Dh) does not)."""
        if self.parametrization == "standard":
            return None
        return (self.base_width / self.num_heads) ** 0.5 / self.head_dim

    def at_width(self, width: int):
        """This config at d_model=`width`: heads fixed (head dim scaled), an explicit d_ff
        scaled by the same factor, base_width unchanged."""
        d_ff = None if self.d_ff is None else max(1, round(self.d_ff * width / self.d_model))
        return dataclasses.replace(self, d_model=width, d_ff=d_ff)

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ff_width(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        return 8 * -(-self.d_model // 3)  # 8/3 * d_model rounded up to a multiple of 8

    def problems(self):
        out = layers.positive(self, "num_layers", "num_heads", "d_model", "max_len", "base_width")
        out += [(n, f"must be positive or none, got {getattr(self, n)}")
                for n in ("num_kv_heads", "d_ff") if getattr(self, n) is not None and getattr(self, n) <= 0]
        if out:
            return out  # the divisibility checks below assume positive sizes
        if self.d_model % self.num_heads:
            out.append(("num_heads", f"must divide d_model={self.d_model}, got {self.num_heads}"))
        elif self.positional == "rope" and self.head_dim % 2:
            out.append(("positional", f"rope needs an even head dim, got d_model/num_heads={self.head_dim}"))
        if self.num_heads % self.kv_heads:
            out.append(("num_kv_heads", f"must divide num_heads={self.num_heads}, got {self.num_kv_heads}"))
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        return out


@dataclasses.dataclass(frozen=True)
class TransformerLMConfig(TransformerCore):
    """A decoder-only (GPT-style) next-token language model with causal self-attention."""

    kind = "transformer_lm"
    # None until the training loop fills it in from the tokenizer.
    vocab_size: int | None = None
    # Output logits = x @ token_embedding^T (Press & Wolf, 2017) instead of a separate
    # ("embed", "vocab") matrix.
    tie_embeddings: bool = True

    def problems(self):
        out = super().problems()
        if self.vocab_size is not None and self.vocab_size <= 0:
            out.append(("vocab_size", f"must be positive or none, got {self.vocab_size}"))
        return out


@dataclasses.dataclass(frozen=True)
class TransformerClassifierConfig(TransformerCore):
    """A bidirectional encoder over token ids, mean-pooled over the non-padding tokens."""

    kind = "transformer_classifier"
    # None until the training loop fills it in from the tokenizer.
    vocab_size: int | None = None
    num_classes: int = 2
    # Tokens equal to pad_id are padding: never attended to, never pooled. Pad on the right, so
    # that the real tokens keep positions 0..n-1.
    pad_id: int = 0

    def problems(self):
        out = super().problems() + layers.positive(self, "num_classes")
        if self.vocab_size is not None and self.vocab_size <= 0:
            out.append(("vocab_size", f"must be positive or none, got {self.vocab_size}"))
        if self.pad_id < 0:
            out.append(("pad_id", f"must be >= 0, got {self.pad_id}"))
        return out


@dataclasses.dataclass(frozen=True)
class ViTConfig(TransformerCore):
    """A Vision Transformer (Dosovitskiy et al., 2021) on NHWC images.

    patch_size must divide the image height and width; that is checked when the model is called,
    since the image size is not part of the config.
    """

    kind = "vit"
    num_classes: int = 10
    patch_size: int = 4
    # "cls": a learned token prepended to the patches, read out at the end; "mean": the average
    # of the patch outputs.
    pool: Literal["cls", "mean"] = "mean"

    def problems(self):
        return super().problems() + layers.positive(self, "num_classes", "patch_size")


# ---------------------------------------------------------------------------------------------
# The shared block and stack.


def _param(module: nn.Module, name: str, init, axes: tuple[str, ...], shape: tuple[int, ...]
           ) -> jax.Array:
    """A parameter named by logical `axes`, stored in the module's config.param_dtype."""
    return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                        jnp.dtype(module.config.param_dtype))


def _norm(cfg: TransformerCore, name: str) -> nn.Module:
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(scale_init=scale_init, dtype=dtype, param_dtype=param_dtype, name=name)
    return nn.LayerNorm(scale_init=scale_init, dtype=dtype, param_dtype=param_dtype, name=name,
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))


class Mlp(nn.Module):
    """Position-wise MLP: gelu (D -> F -> D) or SwiGLU (silu(x Wg) * (x Wu), then -> D)."""

    config: TransformerCore

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        d, f = cfg.d_model, cfg.ff_width

        def weight(name, shape, axes):
            return _param(self, name, nn.initializers.lecun_normal(), axes, shape).astype(dtype)

        x_BxTxD = x_BxTxD.astype(dtype)
        up_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, weight("up", (d, f), ("embed", "mlp")))
        if cfg.mlp == "swiglu":
            gate_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, weight("gate", (d, f), ("embed", "mlp")))
            h_BxTxF = nn.silu(gate_BxTxF) * up_BxTxF
        else:
            h_BxTxF = nn.gelu(up_BxTxF)
        h_BxTxF = layers.constrain(h_BxTxF, ("act_batch", None, "act_mlp"))
        return jnp.einsum("btf,fd->btd", h_BxTxF, weight("down", (f, d), ("mlp", "embed")))


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
            _norm(cfg, "attn_norm")(x_BxTxD), positions_BxT, mask=mask, causal=causal, kv=kv,
            index=index)
        x_BxTxD = layers.constrain(x_BxTxD + drop(h_BxTxD), ("act_batch", None, None))
        h_BxTxD = Mlp(cfg, name="mlp")(_norm(cfg, "mlp_norm")(x_BxTxD))
        return layers.constrain(x_BxTxD + drop(h_BxTxD), ("act_batch", None, None)), kv


class Stack(nn.Module):
    """num_layers blocks, then the final norm. Returns (x_BxTxD, kv).

    `kv`, when given, is the pair (k, v) of every layer's buffers: stacked arrays [L, B, S, K, Dh]
    when scan_layers (the scan slices layer l off the leading axis), or tuples of L arrays
    [B, S, K, Dh] when unrolled (no copy of a stacked buffer per layer); `TransformerLM.init_cache`
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
        return _norm(cfg, "final_norm")(x_BxTxD), kv


def _readout_init(cfg: TransformerCore):
    # muP zero-initialises a separate readout (Tensor Programs V): a random one's contribution
    # fades as 1/m behind the readout multiplier, so narrow and wide models would differ by it.
    return nn.initializers.lecun_normal() if cfg.parametrization == "standard" else nn.initializers.zeros


class ClassHead(nn.Module):
    """A dense layer from pooled features to float32 class logits."""

    config: TransformerClassifierConfig | ViTConfig

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        cfg = self.config
        w_DxN = _param(self, "kernel", _readout_init(cfg), ("embed", "classes"),
                       (cfg.d_model, cfg.num_classes))
        b_N = _param(self, "bias", nn.initializers.zeros, ("classes",), (cfg.num_classes,))
        if cfg.readout_scale is not None:
            x_BxD = x_BxD * cfg.readout_scale  # muP's readout multiplier (see MLP for why)
        # The classes are few: the head is cheap in float32, and the logits need it anyway.
        logits_BxN = jnp.einsum("bd,dn->bn", x_BxD.astype(jnp.float32), w_DxN.astype(jnp.float32))
        return logits_BxN + b_N.astype(jnp.float32)[None, :]


def _token_embedding(cfg, name: str) -> nn.Embed:
    # GPT-2's scale: with tied embeddings, unit-variance rows would make the initial logits grow
    # like sqrt(D).
    return nn.Embed(cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype), name=name,
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                                                ("vocab", "embed")))


def _check_vocab(cfg) -> None:
    if cfg.vocab_size is None:
        raise ValueError(f"{type(cfg).__name__}.vocab_size is None: set model.vocab_size, or let the "
                         "training loop fill it in from the tokenizer")


def _check_length(cfg, length: int) -> None:
    if length > cfg.max_len:
        raise ValueError(f"sequence of {length} positions is longer than model.max_len={cfg.max_len}")


def _positions(length: int) -> jax.Array:
    """[1, T]: one row shared by the batch."""
    return jnp.arange(length, dtype=jnp.int32)[None, :]


# ---------------------------------------------------------------------------------------------
# Language model.


@flax.struct.dataclass
class KVCache:
    """Keys and values of the positions decoded so far, and how many there are.

    k, v: per layer [B, S, K, Dh] in the compute dtype, S = the buffer length given to
    `init_cache`: a tuple of L arrays when unrolled, one array [L, B, S, K, Dh] when scan_layers.
    index: int32 scalar, the number of filled positions (the next position to write).
    """

    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array
    index: jax.Array


class TransformerLM(nn.Module):
    """Next-token language model: tokens_BxT (int32) -> logits_BxTxV (float32), causal.

    Decoding: `cache = model.apply(variables, B, S, method="init_cache")`, then repeatedly
    `logits, cache = model.apply(variables, tokens_BxT, cache, method="decode")` with the prompt
    (prefill) and then one token at a time. Each call sees exactly what a full forward pass over
    the whole prefix would; the cache's `index` is traced, so one jitted decode serves every step.
    """

    config: TransformerLMConfig

    def setup(self):
        cfg = self.config
        _check_vocab(cfg)
        self.embed = _token_embedding(cfg, "embed")
        self.positions = positional.AbsolutePositions(cfg)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.stack = Stack(cfg)
        if not cfg.tie_embeddings:
            self.head = _param(self, "head", _readout_init(cfg), ("embed", "vocab"),
                               (cfg.d_model, cfg.vocab_size))

    def __call__(self, tokens_BxT: jax.Array, *, train: bool = False) -> jax.Array:
        return self.from_embeddings(self.embed(tokens_BxT), train=train)

    def from_embeddings(self, x_BxTxD: jax.Array, *, train: bool = False) -> jax.Array:
        """The model after the token lookup, at positions 0..T-1: the continuous input that
        gradient checks (causality) differentiate with respect to."""
        _check_length(self.config, x_BxTxD.shape[1])
        logits, _ = self._forward(x_BxTxD, _positions(x_BxTxD.shape[1]), causal=True, train=train)
        return logits

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty cache with room for `max_len` positions."""
        cfg = self.config
        _check_length(cfg, max_len)
        shape = (batch_size, max_len, cfg.kv_heads, cfg.head_dim)
        dtype = jnp.dtype(cfg.dtype)
        if cfg.scan_layers:
            k = jnp.zeros((cfg.num_layers, *shape), dtype)
            v = jnp.zeros((cfg.num_layers, *shape), dtype)
        else:
            k = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
            v = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        return KVCache(k=k, v=v, index=jnp.zeros((), jnp.int32))

    def decode(self, tokens_BxT: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Logits of T new tokens at positions index..index+T-1, and the cache with them added.

        T is the prompt length for prefill or 1 per step. The cache must have room for them:
        past the buffer, XLA clamps the write position and the result is wrong, not an error
        (a traced index cannot be checked here).
        """
        t = tokens_BxT.shape[1]
        query_positions_T = cache.index + jnp.arange(t, dtype=jnp.int32)
        buffer_len = jax.tree.leaves(cache.k)[0].shape[-3]
        mask = attention.causal_mask_over_buffer(query_positions_T, buffer_len)
        logits, (k, v) = self._forward(
            self.embed(tokens_BxT), query_positions_T[None, :], mask=mask, kv=(cache.k, cache.v),
            index=cache.index, train=False)
        return logits, KVCache(k=k, v=v, index=cache.index + t)

    def _forward(self, x_BxTxD, positions_BxT, *, mask=None, causal=False, kv=None, index=None,
                 train=False):
        x_BxTxD = self.positions(x_BxTxD, positions_BxT)
        x_BxTxD = self.embed_dropout(x_BxTxD, deterministic=not train)
        x_BxTxD, kv = self.stack(x_BxTxD, positions_BxT, mask=mask, causal=causal, kv=kv,
                                 index=index, train=train)
        # Accumulated and returned in float32: nn.Embed.attend would round the logits to the
        # compute dtype, and bfloat16 logits of a large vocabulary are too coarse for the loss.
        w_DxV = self.embed.embedding.T if self.config.tie_embeddings else self.head
        if self.config.readout_scale is not None:
            # muP's readout multiplier. Tied, the embedding keeps its width-independent init and
            # plain learning rate as an input weight; as the readout it is seen through 1/m.
            x_BxTxD = x_BxTxD * self.config.readout_scale
        logits_BxTxV = jnp.einsum("btd,dv->btv", x_BxTxD, w_DxV.astype(x_BxTxD.dtype),
                                  preferred_element_type=jnp.float32)
        return logits_BxTxV, kv


# ---------------------------------------------------------------------------------------------
# Classifiers.


class TransformerClassifier(nn.Module):
    """Sequence classifier: tokens_BxT (int32, pad_id = padding) -> logits_BxN (float32).

    Bidirectional attention over the real tokens only, then the mean of their outputs. A padded
    sequence gives the same logits as the unpadded one (with right padding, as positions count
    from the first slot).
    """

    config: TransformerClassifierConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        _check_vocab(cfg)
        _check_length(cfg, tokens_BxT.shape[1])
        real_BxT = tokens_BxT != cfg.pad_id
        positions_1xT = _positions(tokens_BxT.shape[1])
        x_BxTxD = _token_embedding(cfg, "embed")(tokens_BxT)
        x_BxTxD = positional.AbsolutePositions(cfg, name="positions")(x_BxTxD, positions_1xT)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxTxD)
        # Padded keys are masked for every query; padded queries still compute (on real keys,
        # so never a fully masked row) but are left out of the pool.
        mask_Bx1x1xT = real_BxT[:, None, None, :]
        x_BxTxD, _ = Stack(cfg, name="stack")(x_BxTxD, positions_1xT, mask=mask_Bx1x1xT, train=train)
        weights_BxT = real_BxT.astype(jnp.float32)
        count_Bx1 = jnp.maximum(jnp.sum(weights_BxT, axis=1, keepdims=True), 1.0)
        pooled_BxD = jnp.einsum("btd,bt->bd", x_BxTxD.astype(jnp.float32), weights_BxT) / count_Bx1
        return ClassHead(cfg, name="head")(pooled_BxD)


class ViT(nn.Module):
    """Vision Transformer: images_BxHixWixC (float32) -> logits_BxN (float32).

    Non-overlapping patch x patch tiles, flattened (row-major within the tile, channels last) and
    projected to D; positions count patches row by row, after the class token when pool="cls".
    """

    config: ViTConfig

    @nn.compact
    def __call__(self, images_BxHixWixC: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        b, hi, wi, c = images_BxHixWixC.shape
        p = cfg.patch_size
        if hi % p or wi % p:
            raise ValueError(f"model.patch_size={p} must divide the image size {hi}x{wi}")
        gh, gw = hi // p, wi // p
        patches_BxPxQ = (images_BxHixWixC.reshape(b, gh, p, gw, p, c)
                         .transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, p * p * c))
        w_QxD = _param(self, "patch_kernel", nn.initializers.lecun_normal(), ("patch", "embed"),
                       (p * p * c, cfg.d_model))
        b_D = _param(self, "patch_bias", nn.initializers.zeros, ("embed",), (cfg.d_model,))
        x_BxTxD = (jnp.einsum("bpq,qd->bpd", patches_BxPxQ.astype(dtype), w_QxD.astype(dtype))
                   + b_D.astype(dtype)[None, None, :])
        if cfg.pool == "cls":
            cls_D = _param(self, "cls", nn.initializers.zeros, ("embed",), (cfg.d_model,))
            cls_Bx1xD = jnp.broadcast_to(cls_D.astype(dtype)[None, None, :], (b, 1, cfg.d_model))
            x_BxTxD = jnp.concatenate([cls_Bx1xD, x_BxTxD], axis=1)
        _check_length(cfg, x_BxTxD.shape[1])
        positions_1xT = _positions(x_BxTxD.shape[1])
        x_BxTxD = positional.AbsolutePositions(cfg, name="positions")(x_BxTxD, positions_1xT)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxTxD)
        x_BxTxD, _ = Stack(cfg, name="stack")(x_BxTxD, positions_1xT, train=train)
        if cfg.pool == "cls":
            pooled_BxD = x_BxTxD[:, 0]
        else:
            pooled_BxD = jnp.mean(x_BxTxD.astype(jnp.float32), axis=1)
        return ClassHead(cfg, name="head")(pooled_BxD)
