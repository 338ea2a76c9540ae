"""A multi-layer perceptron on flattened inputs. Shapes: B batch, F features, K classes."""

import dataclasses

import flax.linen as nn
import jax

from jaxmodels.models import layers


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    kind = "mlp"
    num_classes: int = 10
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0

    def problems(self):
        out = layers.positive(self, "num_classes")
        if any(h <= 0 for h in self.hidden):
            out.append(("hidden", f"must hold positive widths, got {self.hidden}"))
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        return out


class MLP(nn.Module):
    config: MLPConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x_BxF = x.reshape(x.shape[0], -1)
        in_axis = "embed"
        for i, width in enumerate(cfg.hidden):
            x_BxF = nn.relu(layers.dense(width, (in_axis, "mlp"), name=f"dense{i}")(x_BxF))
            x_BxF = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxF)
            in_axis = "mlp"
        return layers.dense(cfg.num_classes, (in_axis, "classes"), name="head")(x_BxF)
