"""The model interface the loop consumes: two pure functions, like an optax transformation.

    model = jaxmodels.Model(init, apply)
    variables = model.init(rng, example_inputs)       # {"params": ..., other collections}
    outputs, model_state = model.apply(variables, inputs, train=True, rng=rng)

`init(rng, example_inputs)` returns the variables: a dict whose "params" entry is what the
optimizer trains; every other entry is mutable model state (BatchNorm's "batch_stats"). Leaves
may be `flax.linen.Partitioned` boxes carrying logical axis names (the rules table shards them
by name); plain arrays get the default rule. `example_inputs` is one example with its batch axis
([1, ...]); only its shape and dtype matter.

`apply(variables, inputs, *, train, rng)` returns `(outputs, model_state)`: the model's outputs
for the batch and the updated non-"params" collections (the input ones when nothing changed, an
empty dict for stateless models). `rng` is a PRNG key for dropout in training, None in
evaluation. Both functions must be pure (jit-able, no hidden state).

`as_model` adapts what researchers already have: a `flax.linen.Module` (with or without a
`train` argument, with or without mutable collections), a `flax.nnx.Module` (through
`nnx.split`/`nnx.merge`, so the step stays pure), or a pair `(init, apply)` of plain functions
with `init(rng, example) -> params` and `apply(params, inputs) -> outputs` (Equinox- or
Haiku-style code, without importing either). `apply` of a pair may also take `train=` and
`rng=` keywords; it is given those it declares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax

from jaxmodels.errors import ConfigError


class Model(NamedTuple):
    """A model as two pure functions (see the module docstring for the contract)."""

    init: Callable[[jax.Array, Any], dict]
    apply: Callable[..., tuple[Any, dict]]
    name: str = "model"
    # The object adapted (a Linen or NNX module, a pair), for tools that need more than the two
    # functions: `jaxmodels plan` traces a Linen module's intermediates for activation memory.
    module: Any = None


def _keywords(fn) -> set[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"train", "rng", "deterministic"}
    return {p.name for p in params}


def from_linen(module: nn.Module) -> Model:
    """A Linen module as a Model. `train` is passed only when `__call__` declares it; dropout
    draws from the "dropout" stream; in training every non-"params" collection is mutable."""
    takes_train = "train" in _keywords(module.__call__)

    def kw(train: bool) -> dict:
        return {"train": train} if takes_train else {}

    def init(rng, example):
        return module.init({"params": rng, "dropout": rng}, example, **kw(False))

    def apply(variables, inputs, *, train: bool, rng=None):
        state = {k: v for k, v in variables.items() if k != "params"}
        if not train:
            return module.apply(variables, inputs, **kw(False)), state
        rngs = {"dropout": rng} if rng is not None else {}
        if not state:
            return module.apply(variables, inputs, rngs=rngs, **kw(True)), {}
        outputs, new_state = module.apply(variables, inputs, rngs=rngs, mutable=list(state),
                                          **kw(True))
        return outputs, dict(new_state)

    return Model(init, apply, type(module).__name__, module)


def from_nnx(module) -> Model:
    """An NNX module as a Model. Its parameters and other variables (BatchNorm statistics) are
    split off as plain nested dicts; its RNG streams are not state here: each step reseeds them
    from the step's key, so dropout is a pure function of (seed, step) and resumes exactly.
    `init` returns the module's current variables (an NNX module is built initialised: its own
    `nnx.Rngs` decide the initial weights, not the loop's seed)."""
    from flax import nnx

    streams = _streams(module)
    graphdef, params, rngs, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)

    def init(rng, example):
        del rng, example
        return {"params": nnx.to_pure_dict(params), "nnx_state": nnx.to_pure_dict(rest)}

    def merged(variables):
        # Fresh copies of the templates: merge builds its variables at the current trace level.
        p, g, r = (jax.tree.map(lambda x: x, s) for s in (params, rngs, rest))
        nnx.replace_by_pure_dict(p, variables["params"])
        nnx.replace_by_pure_dict(r, variables.get("nnx_state", {}))
        return nnx.merge(graphdef, p, g, r)

    def apply(variables, inputs, *, train: bool, rng=None):
        m = merged(variables)
        if train:
            m.train()
            if rng is not None and streams:
                nnx.reseed(m, **{name: jax.random.fold_in(rng, i) for i, name in enumerate(streams)})
        else:
            m.eval()
        outputs = m(inputs)
        new_rest = nnx.split(m, nnx.Param, nnx.RngState, ...)[3]
        return outputs, {"nnx_state": nnx.to_pure_dict(new_rest)}

    return Model(init, apply, type(module).__name__, module)


def _streams(module) -> list[str]:
    """Tags of the RNG streams an NNX module holds (e.g. "default", "dropout")."""
    from flax import nnx

    tags = []
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.RngStream) and node.tag not in tags:
            tags.append(node.tag)
    return tags


def from_pair(init: Callable, apply: Callable, name: str = "model") -> Model:
    """Plain functions `init(rng, example) -> params` and `apply(params, inputs[, train=,
    rng=]) -> outputs` as a Model with no mutable state."""
    accepted = _keywords(apply)

    def model_init(rng, example):
        return {"params": init(rng, example)}

    def model_apply(variables, inputs, *, train: bool, rng=None):
        kw = {}
        if "train" in accepted:
            kw["train"] = train
        if "rng" in accepted:
            kw["rng"] = rng
        return apply(variables["params"], inputs, **kw), {}

    return Model(model_init, model_apply, name, (init, apply))


def as_model(obj) -> Model:
    """Whatever a researcher brings, as a Model; a one-line error for anything else."""
    if isinstance(obj, Model):
        return obj
    if isinstance(obj, nn.Module):
        return from_linen(obj)
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax always ships nnx in the supported range
        nnx = None
    if nnx is not None and isinstance(obj, nnx.Module):
        return from_nnx(obj)
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        raise ConfigError(f"got the class {obj.__name__}, not a module: pass an instance, e.g. "
                          f"{obj.__name__}(...)")
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(callable(f) for f in obj):
        return from_pair(*obj)
    raise ConfigError(f"cannot train a {type(obj).__name__}: pass a flax.linen.Module, a "
                      f"flax.nnx.Module, an (init, apply) pair of functions or a jaxmodels.Model")


def abstract_variables(model: Model, example) -> Any:
    """The variables as shapes only (`jax.eval_shape`: nothing is allocated), still boxed with
    any logical axis names, for deriving shardings before the state exists."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), example))


@dataclasses.dataclass(frozen=True)
class GivenModelConfig:
    """The model section of a run whose model was handed over in Python (`jaxmodels.fit`,
    `train(..., parts=Parts(model=...))`) rather than named by a registered config. It records
    what the model was, so config.json says it and a resume with another model is refused."""

    kind = "given"
    name: str = "model"  # the module's class name
    fingerprint: str = ""  # hash of the parameter tree's paths, shapes and dtypes


def fingerprint(model: Model, example) -> str:
    """A short hash of the model's parameter structure (paths, shapes, dtypes)."""
    shapes = abstract_variables(model, example)
    flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(shapes))[0]
    text = ";".join(f"{jax.tree_util.keystr(p)}:{tuple(x.shape)}:{x.dtype}" for p, x in flat)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _given_elsewhere(config: GivenModelConfig):
    raise ConfigError(f"this run's model ({config.name}) was given in Python, not by a registered "
                      f"config: pass the model again (jaxmodels.fit(model, ...) or predict(..., "
                      f"model=model)), or register it with jaxmodels.register_model")
