"""The transformer classifiers: a text classifier (mean-pooled bidirectional encoder) and the
Vision Transformer, sharing one class head.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); D model width (an RNN's hidden state); K classes; Hi image
height; Wi image width; C channels; P patches; Q values per patch (patch x patch x C).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.models import layers, positional
from jaxmodels.models.transformer_blocks import (Stack, check_length, check_vocab, param, positions_row,
                                                 readout_init, token_embedding)
from jaxmodels.models.transformer_config import TransformerClassifierConfig, ViTConfig


class ClassHead(nn.Module):
    """A dense layer from pooled features to float32 class logits."""

    config: TransformerClassifierConfig | ViTConfig

    @nn.compact
    def __call__(self, x_BxD: jax.Array) -> jax.Array:
        cfg = self.config
        w_DxK = param(self, "kernel", readout_init(cfg), ("embed", "classes"),
                      (cfg.d_model, cfg.num_classes))
        b_K = param(self, "bias", nn.initializers.zeros, ("classes",), (cfg.num_classes,))
        if cfg.readout_scale is not None:
            x_BxD = x_BxD * cfg.readout_scale  # muP's readout multiplier (see MLP for why)
        # The classes are few: the head is cheap in float32, and the logits need it anyway.
        logits_BxK = jnp.einsum("bd,dk->bk", x_BxD.astype(jnp.float32), w_DxK.astype(jnp.float32))
        return logits_BxK + b_K.astype(jnp.float32)[None, :]


class TransformerClassifier(nn.Module):
    """Sequence classifier: tokens_BxT (int32, pad_id = padding) -> logits_BxK (float32).

    Bidirectional attention over the real tokens only, then the mean of their outputs. A padded
    sequence gives the same logits as the unpadded one (with right padding, as positions count
    from the first slot).
    """

    config: TransformerClassifierConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        check_vocab(cfg)
        check_length(cfg, tokens_BxT.shape[1])
        real_BxT = tokens_BxT != cfg.pad_id
        positions_1xT = positions_row(tokens_BxT.shape[1])
        x_BxTxD = token_embedding(cfg, "embed")(tokens_BxT)
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
    """Vision Transformer: images_BxHixWixC (float32) -> logits_BxK (float32).

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
        w_QxD = param(self, "patch_kernel", nn.initializers.lecun_normal(), ("patch", "embed"),
                      (p * p * c, cfg.d_model))
        b_D = param(self, "patch_bias", nn.initializers.zeros, ("embed",), (cfg.d_model,))
        x_BxTxD = (layers.rows_dot(patches_BxPxQ.astype(dtype), w_QxD.astype(dtype))
                   + b_D.astype(dtype)[None, None, :])
        if cfg.pool == "cls":
            cls_D = param(self, "cls", nn.initializers.zeros, ("embed",), (cfg.d_model,))
            cls_Bx1xD = jnp.broadcast_to(cls_D.astype(dtype)[None, None, :], (b, 1, cfg.d_model))
            x_BxTxD = jnp.concatenate([cls_Bx1xD, x_BxTxD], axis=1)
        check_length(cfg, x_BxTxD.shape[1])
        positions_1xT = positions_row(x_BxTxD.shape[1])
        x_BxTxD = positional.AbsolutePositions(cfg, name="positions")(x_BxTxD, positions_1xT)
        x_BxTxD = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxTxD)
        x_BxTxD, _ = Stack(cfg, name="stack")(x_BxTxD, positions_1xT, train=train)
        if cfg.pool == "cls":
            pooled_BxD = x_BxTxD[:, 0]
        else:
            pooled_BxD = jnp.mean(x_BxTxD.astype(jnp.float32), axis=1)
        return ClassHead(cfg, name="head")(pooled_BxD)
