"""`model.init_from=WORKDIR`: a fresh run's parameters (and model collections) are the weights
saved in another workdir, a trained run's or an imported checkpoint's (`jaxmodels import-hf`),
restored straight into this run's shardings, whatever its parallel preset. The optimizer state is
the fresh one. A resumed run never comes here: it reads its own checkpoint, so resuming is bitwise
the uninterrupted run.
"""

import json
import pathlib

import jax

from jaxmodels import config as config_lib
from jaxmodels import models
from jaxmodels.errors import ConfigError, UserError
from jaxmodels.training import checkpoint


def _source_shapes(path: pathlib.Path, example) -> dict:
    """The parameter shapes the source workdir's own config gives (no weights read)."""
    import flax.linen as nn

    try:
        src = config_lib.from_dict(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"model.init_from={str(path)!r} has no readable config.json ({type(e).__name__}): "
                        "give the workdir of a trained or imported run") from None
    model = models.build(src.model)
    abstract = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), example)))
    return jax.tree.map(lambda x: x.shape, abstract["params"])


def fresh_state(s):
    """`s.init_fn()`, its params and model_state replaced by model.init_from's when set."""
    state = s.init_fn()
    source = getattr(s.config.model, "init_from", None)
    if not source:
        return state
    path = pathlib.Path(source)
    if not (path / checkpoint.WEIGHTS_DIR).is_dir():
        raise UserError(f"model.init_from={source!r} has no weights/: give the workdir of a finished "
                        "run or of `jaxmodels import-hf`")
    ours = jax.tree.map(lambda x: x.shape, state.params)
    example = jax.numpy.zeros((1, min(8, getattr(s.config.model, "max_len", 8))), jax.numpy.int32)
    theirs = _source_shapes(path, example)
    if jax.tree.structure(ours) != jax.tree.structure(theirs) or ours != theirs:
        flat_o = dict(jax.tree_util.tree_flatten_with_path(ours, is_leaf=lambda x: isinstance(x, tuple))[0])
        flat_t = dict(jax.tree_util.tree_flatten_with_path(theirs, is_leaf=lambda x: isinstance(x, tuple))[0])
        diff = next((k for k in flat_o if flat_t.get(k) != flat_o[k]), None) or next(iter(set(flat_t) - set(flat_o)))
        name = "/".join(str(getattr(k, "key", k)) for k in diff)
        raise ConfigError(f"model.init_from={source!r} does not fit this model: parameter {name} is "
                          f"{flat_t.get(diff)} there and {flat_o.get(diff)} here; use the source's "
                          f"model config (its config.json)")
    saved = checkpoint.restore_weights(path, {"params": state.params, "model_state": state.model_state})
    # Restored arrays may be views of host memory (CPU); the train step donates the state.
    saved = jax.tree.map(lambda x: x.copy(), saved)
    return state.replace(params=saved["params"], model_state=saved["model_state"])
