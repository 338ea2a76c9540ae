"""Convolutional image classifiers.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; Hi image height; Wi
image width; C channels; F features other than the model width (an MLP's hidden units, a flattened
image, an RNN's per-step input); K classes.

Images are NHWC. Every parameter carries logical axis names ("conv_in", "conv_out",
"embed", "mlp", "classes"); a rules table in the parallel layer maps them to mesh axes, so this
file never mentions a device mesh.

Both models return float32 logits. `model.dtype` is the compute dtype of the convolutions, the
normalisation and the hidden dense (BatchNorm reduces its batch statistics in float32 all the
same, and keeps its running averages in float32); the head multiplies in it and accumulates in
float32 (models/precision.py). The softmax of "dense 10 with softmax" is folded into the
cross-entropy loss (log-softmax there is numerically safer); `jax.nn.softmax(logits)` gives the
probabilities.
"""

import dataclasses

import flax.linen as nn
import jax

from jaxmodels.models import layers, precision


@dataclasses.dataclass(frozen=True)
class SeedCNNConfig(precision.Precision):
    """The classic Keras-style CNN: Conv 3x3/32 same + ReLU, max-pool 2x2/2, flatten, dense."""

    kind = "seed_cnn"
    num_classes: int = 10
    filters: int = 32
    kernel_size: int = 3

    def problems(self):
        return (layers.positive(self, "num_classes", "filters", "kernel_size")
                + self.precision_problems())


class SeedCNN(nn.Module):
    config: SeedCNNConfig

    @nn.compact
    def __call__(self, x_BxHixWixC: jax.Array, *, train: bool = False) -> jax.Array:
        del train  # no dropout or batch statistics in the classic model
        cfg = self.config
        x = layers.conv(cfg.filters, cfg.kernel_size, name="conv", dtype=cfg.compute_dtype,
                        param_dtype=cfg.params_dtype)(x_BxHixWixC)
        x = nn.relu(x)
        x = layers.max_pool(x, 2)
        x_BxF = x.reshape(x.shape[0], -1)
        return precision.readout(cfg.num_classes, ("embed", "classes"), cfg, name="head")(x_BxF)


@dataclasses.dataclass(frozen=True)
class BatchNormCNNConfig(precision.Precision):
    """A stronger CNN: conv blocks of [conv-BN-ReLU] x 2 then max-pool, a hidden dense, dropout.

    BatchNorm's running statistics live in the mutable "batch_stats" collection: they are updated
    by the train step and frozen in evaluation, which is what this model is here to exercise.
    """

    kind = "bn_cnn"
    num_classes: int = 10
    block_filters: tuple[int, ...] = (32, 64)
    convs_per_block: int = 2
    hidden: int = 128
    dropout: float = 0.25
    bn_momentum: float = 0.9

    def problems(self):
        out = layers.positive(self, "num_classes", "convs_per_block", "hidden")
        if not self.block_filters or min(self.block_filters) <= 0:
            out.append(("block_filters", "must be a non-empty list of positive ints"))
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if not 0.0 < self.bn_momentum < 1.0:
            out.append(("bn_momentum", f"must be in (0, 1), got {self.bn_momentum}"))
        return out + self.precision_problems()


class BatchNormCNN(nn.Module):
    config: BatchNormCNNConfig

    @nn.compact
    def __call__(self, x_BxHixWixC: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        dtypes = {"dtype": cfg.compute_dtype, "param_dtype": cfg.params_dtype}
        x = x_BxHixWixC
        for b, filters in enumerate(cfg.block_filters):
            for c in range(cfg.convs_per_block):
                # No conv bias: the BatchNorm shift that follows makes it redundant.
                x = layers.conv(filters, 3, use_bias=False, name=f"conv{b}_{c}", **dtypes)(x)
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=cfg.bn_momentum,
                    scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("conv_out",)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                    name=f"bn{b}_{c}",
                    **dtypes,
                )(x)
                x = nn.relu(x)
            x = layers.max_pool(x, 2)
        x_BxF = x.reshape(x.shape[0], -1)
        x = nn.relu(layers.dense(cfg.hidden, ("embed", "mlp"), name="hidden", **dtypes)(x_BxF))
        x = nn.Dropout(cfg.dropout, deterministic=not train)(x)
        return precision.readout(cfg.num_classes, ("mlp", "classes"), cfg, name="head")(x)
