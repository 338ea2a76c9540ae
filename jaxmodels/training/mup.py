"""muP's per-parameter learning-rate multipliers, and the optax transform that applies them.

Maximal update parametrization (Yang et al., "Tensor Programs V", 2022, Table 3) makes every
layer's activations and their updates O(1) in the width, so hyper-parameters tuned on a narrow
model carry over to a wide one. jaxmodels writes it in the form of the `mup` package, which
equals the table's up to where the width factors sit: the initialisations stay the standard
1/fan_in ones except a separate readout, which starts at zero (allowed by the table, advised by
the paper); the models multiply their readout's input by 1/m and use a 1/Dh-style attention
scale (`parametrization="mup"` in MLPConfig and the Transformer configs); and the optimizer
scales the learning rate of each parameter by its role, m = width / base_width being the width
multiplier:

  role     what it is                                       Adam-like    SGD
  fixed    no dimension grows with width (a class bias)     1            1
  vector   one dimension grows: embeddings, the first       1            m
           layer, biases, norm scales, and the readout
           (whose forward 1/m makes its update 1/m)
  hidden   two grow: the matrices between hidden layers     1/m          1

(Adam-like: adam, adamw, lion, whose per-coordinate update sizes do not depend on the gradient's
scale.) Roles come from the logical axis names every parameter carries: a config lists its
`width_axes` (a Transformer's "embed", "mlp", "head_dim"; an MLP's "mlp"), and a parameter's role
is how many of its dimensions carry one of them. Shapes alone cannot tell a 128 x 128 hidden
matrix from a 128-class readout of a 128-wide model; names can.

Weight decay: adamw and lion get the multiplier between their direction and the decoupled decay
(`optim.make`), so the decay per step stays lr x weight_decay at every width, as the `mup`
package's MuAdamW does by default; only the gradient-driven part of the update is rescaled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import flax.linen as nn
import jax
import optax

from jaxmodels.errors import ConfigError
from jaxmodels.training.state import abstract_variables

Role = Literal["fixed", "vector", "hidden"]


@runtime_checkable
class WidthScalable(Protocol):
    """A model config that supports muP (MLPConfig, the Transformer configs)."""

    parametrization: str
    base_width: int
    width_axes: frozenset[str]

    @property
    def width(self) -> int: ...

    @property
    def width_multiplier(self) -> float: ...

    def at_width(self, width: int) -> WidthScalable: ...


def _adam_like(role: Role, m: float) -> float:
    return 1.0 / m if role == "hidden" else 1.0


def _sgd(role: Role, m: float) -> float:
    return m if role == "vector" else 1.0


# Optimizer name -> (role, width multiplier) -> learning-rate multiplier. Adafactor is absent:
# its default update is relative to each parameter's scale, which muP's table does not cover.
LR_RULES: dict[str, Callable[[Role, float], float]] = {
    "adam": _adam_like,
    "adamw": _adam_like,
    "lion": _adam_like,
    "sgd": _sgd,
}


def role(names: tuple[str | None, ...], width_axes: frozenset[str]) -> Role:
    """A parameter's role from its logical axis names ("layers", the depth axis of scanned
    blocks, never counts)."""
    grows = sum(name in width_axes for name in names)
    if grows > 2:
        raise ValueError(f"parameter axes {names} have {grows} width axes; muP defines at most 2")
    return ("fixed", "vector", "hidden")[grows]


def _is_boxed(x) -> bool:
    return isinstance(x, nn.Partitioned)


def roles(boxed_params, width_axes: frozenset[str]):
    """The params tree (boxed with logical names, e.g. from `state.abstract_variables`) with
    each leaf replaced by its role."""

    def one(path, leaf) -> Role:
        if not _is_boxed(leaf):
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} carries no logical axis names: "
                             "muP cannot tell its role (name it with nn.with_logical_partitioning)")
        return role(tuple(leaf.names), width_axes)

    return jax.tree_util.tree_map_with_path(one, boxed_params, is_leaf=_is_boxed)


def check_optimizer(model_cfg, optimizer_name: str) -> None:
    """A ConfigError when `model_cfg` is muP and the optimizer has no muP rule."""
    is_mup = isinstance(model_cfg, WidthScalable) and model_cfg.parametrization == "mup"
    if is_mup and optimizer_name not in LR_RULES:
        raise ConfigError(f"optimizer.name={optimizer_name} has no muP learning-rate rule: use "
                          f"{', '.join(LR_RULES)}, or model.parametrization=standard")


def lr_multipliers(model_cfg, optimizer_name: str, model: nn.Module, example_input: jax.Array
                   ) -> Any | None:
    """Per-parameter learning-rate multipliers (a params-shaped tree of floats) for the muP
    `model` built from `model_cfg`, or None under the standard parametrization (the optimizer
    is then left untouched). Traces the model's init for its logical names; allocates nothing."""
    if not isinstance(model_cfg, WidthScalable) or model_cfg.parametrization == "standard":
        return None
    check_optimizer(model_cfg, optimizer_name)
    rule = LR_RULES[optimizer_name]
    boxed = abstract_variables(model, example_input)["params"]
    m = model_cfg.width_multiplier
    return jax.tree.map(lambda r: rule(r, m), roles(boxed, model_cfg.width_axes))


def scale_by_multipliers(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by its entry of `multipliers` (a params-shaped tree of floats).

    Stateless. Placed after an optimizer's direction (and before its learning rate, or anywhere
    after an optimizer without weight decay) it is a per-parameter learning rate.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        # A Python float keeps the update's dtype (weak typing); 1.0 is left out of the graph.
        scaled = jax.tree.map(lambda u, m: u if m == 1.0 else u * m, updates, multipliers)
        return scaled, state

    return optax.GradientTransformation(init_fn, update_fn)
