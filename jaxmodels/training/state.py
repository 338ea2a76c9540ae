"""The train state: everything a step reads and writes, as one pytree."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxmodels.models import interface
from jaxmodels.models.interface import as_model


@flax.struct.dataclass
class TrainState:
    """params, optimizer state, mutable model collections, step and PRNG key.

    `model_state` holds the mutable collections other than params (BatchNorm's "batch_stats");
    it is an empty dict for models without any. `rng` is raw uint32 key data rather than a typed
    key so that the state stays plain arrays for checkpointing and sharding; steps derive their
    randomness as fold_in(rng, step) and never advance it. `loss_stats` is [count, mean, variance]
    of recently accepted losses, for the spike guard (kept in the state so a resumed run guards
    exactly as the uninterrupted one would).
    """

    step: jax.Array
    params: Any
    opt_state: optax.OptState
    model_state: dict[str, Any]
    rng: jax.Array
    loss_stats: jax.Array


def init_state(model, tx: optax.GradientTransformation, example_input: jax.Array,
               seed: int) -> TrainState:
    """A fresh state for `model` (anything `jaxmodels.as_model` accepts). Pure in `seed`, so it
    can run under `jax.jit(..., out_shardings=...)` and be born sharded. `example_input` only
    provides shapes (one example is enough)."""
    root = jax.random.key(seed)
    init_key, train_key = jax.random.split(root)
    variables = dict(as_model(model).init(init_key, example_input))
    # Parameters carry logical axis names as metadata boxes; the state holds plain arrays and the
    # names are read separately (parallel layer) from the boxed tree.
    variables = nn.meta.unbox(variables)
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=dict(variables),
        rng=jax.random.key_data(train_key),
        loss_stats=jnp.zeros((3,), jnp.float32),
    )


def abstract_variables(model, example_input: jax.Array):
    """The model's variables as shapes only (`jax.eval_shape`: nothing is allocated), still
    boxed with their logical axis names, for deriving shardings before the state exists."""
    return interface.abstract_variables(as_model(model), example_input)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
