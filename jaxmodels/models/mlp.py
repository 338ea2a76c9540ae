"""A multi-layer perceptron on flattened inputs.

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; F features other than
the model width (an MLP's hidden units, a flattened image, an RNN's per-step input); K classes.
"""

import dataclasses
from typing import Literal

import flax.linen as nn
import jax

from jaxmodels.models import layers, precision


@dataclasses.dataclass(frozen=True)
class MLPConfig(precision.Precision):
    kind = "mlp"
    # Logical axes whose size is the width muP scales (jaxmodels/training/mup.py): the hidden
    # units. "embed" here is the flattened input, fixed by the data.
    width_axes = frozenset({"mlp"})
    num_classes: int = 10
    hidden: tuple[int, ...] = (256, 256)
    dropout: float = 0.0
    # "mup": maximal update parametrization for Adam-family optimizers (Yang et al., 2022): the
    # readout starts at zero and sees its input times base_width/width, and hidden matrices
    # train at the learning rate times base_width/width (training/mup.py), so activations and
    # the best learning rate stay put as the width grows. At width == base_width the same
    # function of the same parameters as "standard", trained the same way; only the readout's
    # zero init differs. The width is the hidden width; under mup every hidden layer has it.
    parametrization: Literal["standard", "mup"] = "standard"
    base_width: int = 256

    @property
    def width(self) -> int:
        return self.hidden[-1] if self.hidden else 0

    @property
    def width_multiplier(self) -> float:
        return self.width / self.base_width

    def at_width(self, width: int) -> "MLPConfig":
        """This config with every hidden layer `width` units wide (base_width unchanged)."""
        return dataclasses.replace(self, hidden=(width,) * len(self.hidden))

    def problems(self):
        out = layers.positive(self, "num_classes", "base_width")
        if any(h <= 0 for h in self.hidden):
            out.append(("hidden", f"must hold positive widths, got {self.hidden}"))
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        if self.parametrization == "mup" and len(set(self.hidden)) != 1:
            out.append(("hidden", f"must repeat one width under model.parametrization=mup (the "
                                  f"width muP scales), got {self.hidden}: e.g. model.hidden=256,256"))
        return out + self.precision_problems()


class MLP(nn.Module):
    config: MLPConfig

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x_BxF = x.reshape(x.shape[0], -1)
        in_axis = "embed"
        for i, width in enumerate(cfg.hidden):
            x_BxF = nn.relu(layers.dense(width, (in_axis, "mlp"), name=f"dense{i}", dtype=cfg.compute_dtype,
                                         param_dtype=cfg.params_dtype)(x_BxF))
            x_BxF = nn.Dropout(cfg.dropout, deterministic=not train)(x_BxF)
            in_axis = "mlp"
        if cfg.parametrization == "standard":
            return precision.readout(cfg.num_classes, (in_axis, "classes"), cfg, name="head")(x_BxF)
        # muP's readout: its input times 1/m, so that its plain-learning-rate Adam updates move
        # the logits by O(1) at every width (an update aligned with x sums `width` terms), where
        # the standard readout's move grows with the width. Zero-initialised as Tensor Programs
        # V advises: a random readout's contribution W0 dx/m fades as 1/m, so the narrow
        # models would otherwise differ from the wide ones by it.
        head = precision.readout(cfg.num_classes, (in_axis, "classes"), cfg, name="head",
                                 kernel_init=nn.initializers.zeros)
        return head(x_BxF * (cfg.base_width / cfg.width))
