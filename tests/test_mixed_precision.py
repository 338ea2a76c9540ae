"""Mixed precision in every family: bfloat16 compute with float32 parameters.

On the same float32 parameters, the bfloat16 model must give logits, loss and gradients close to
the float32 model's; every matmul and convolution of its forward pass must take bfloat16 operands,
and every one of its backward pass at least one (the dtype really flows: the backward matmuls
that meet a float32 cotangent, from the float32 logits or an RNN's float32 state, mix it with a
bfloat16 operand); gradients and the parameters after a train step stay float32; the logits are
float32.

Tolerances. bfloat16 keeps 8 significant bits (a relative rounding of up to 2^-9 = 0.2 %). On
these tiny models, with the same float32 parameters, measured: logits within 0.3-0.6 % of their
largest magnitude, losses within 0.08 %, gradients (all parameters as one vector) within
0.4-0.7 % in relative L2 norm. The bounds are about 4x those. They catch a broken cast (a
value computed from the wrong tensor, a lost scale, a sum overflowing); that the compute is
really bfloat16 (and not silently float32, which would pass any closeness bound) is what the
operand-dtype checks are for, and they also require that the bfloat16 run differs at all.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.extend as jax_extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmodels import models
from jaxmodels import config as config_lib
from jaxmodels.config import OptimizerConfig
from jaxmodels.errors import ConfigError
from jaxmodels.training import optim
from jaxmodels.training import step as step_lib
from jaxmodels.training.state import init_state

LOGITS_RTOL = 2.5e-2  # max |logits difference| / max |float32 logits|
LOSS_RTOL = 4e-3
GRAD_RTOL = 3e-2  # ||grad difference|| / ||float32 grad||, over all parameters at once

IMAGES = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)
TOKENS = np.random.default_rng(1).integers(0, 11, size=(4, 12)).astype(np.int32)

# (config, inputs, targets): every family at a size that compiles in well under a second.
FAMILIES = {
    "seed_cnn": (models.SeedCNNConfig(filters=4), IMAGES, np.arange(4) % 10),
    "bn_cnn": (models.BatchNormCNNConfig(block_filters=(4,), convs_per_block=1, hidden=8, dropout=0.0),
               IMAGES, np.arange(4) % 10),
    "mlp": (models.MLPConfig(hidden=(16, 16)), IMAGES, np.arange(4) % 10),
    "elman_lm": (models.RNNLMConfig(cell="elman", hidden=16, embed_dim=8, vocab_size=11), TOKENS,
                 np.roll(TOKENS, -1, axis=1)),
    "lstm_lm": (models.RNNLMConfig(cell="lstm", hidden=16, embed_dim=8, vocab_size=11, num_layers=2),
                TOKENS, np.roll(TOKENS, -1, axis=1)),
    # The classifier's row-by-row image input, with the third cell.
    "gru_classifier": (models.RNNClassifierConfig(cell="gru", hidden=16), IMAGES, np.arange(4) % 10),
    "transformer_lm": (models.TransformerLMConfig(num_layers=1, num_heads=2, d_model=16, max_len=16,
                                                  vocab_size=11), TOKENS, np.roll(TOKENS, -1, axis=1)),
}


def _loss_fn(cfg):
    model = models.build(cfg)

    def loss(params, model_state, inputs, targets):
        # train=True: BatchNorm normalises with the batch's own statistics, the path that matters.
        logits, _ = model.apply({"params": params, **model_state}, inputs, train=True,
                                mutable=list(model_state))
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(), logits

    return loss


def _random_variables(cfg, inputs) -> dict:
    """Float32 variables of the model's shapes, drawn with NumPy at roughly fan-in scale.

    Only the shapes come from `init` (eval_shape: traced, never compiled); compiling each
    family's init would double this file's run time, and any well-scaled values compare the two
    dtypes as well as the initializers' own would."""
    shapes = nn.meta.unbox(jax.eval_shape(models.build(cfg).init, jax.random.key(0), inputs))
    rng = np.random.default_rng(0)

    def draw(path, s):
        noise = rng.normal(size=s.shape).astype(np.float32)
        if len(s.shape) >= 2:
            return noise / np.sqrt(np.prod(s.shape[:-1]))
        if jax.tree_util.keystr(path[-1:]) in ("['scale']", "['var']"):
            return 1.0 + 0.1 * noise  # norm scales and BatchNorm's running variance
        return 0.1 * noise  # biases, running means

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _matmul_operand_dtypes(jaxpr) -> list[set]:
    """The set of operand dtypes of every dot_general and convolution, nested jaxprs included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            out.append({v.aval.dtype for v in eqn.invars})
        for sub in jax_extend.core.jaxprs_in_params(eqn.params):
            out += _matmul_operand_dtypes(sub)
    return out


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bfloat16_compute_is_close_to_float32_and_flows(name):
    cfg32, inputs, targets = FAMILIES[name]
    cfg16 = dataclasses.replace(cfg32, dtype="bfloat16")
    variables = _random_variables(cfg32, inputs)
    params = variables.pop("params")
    args = (params, dict(variables), inputs, jnp.asarray(targets))

    bf16 = jnp.dtype(jnp.bfloat16)
    forward = _matmul_operand_dtypes(jax.make_jaxpr(_loss_fn(cfg16))(*args).jaxpr)
    assert forward and all(d == {bf16} for d in forward), forward
    grad16 = jax.value_and_grad(_loss_fn(cfg16), has_aux=True)
    both = _matmul_operand_dtypes(jax.make_jaxpr(grad16)(*args).jaxpr)
    assert len(both) > len(forward) and all(bf16 in d for d in both), both

    (loss16, logits16), grads16 = jax.jit(grad16)(*args)
    (loss32, logits32), grads32 = jax.jit(jax.value_and_grad(_loss_fn(cfg32), has_aux=True))(*args)
    assert logits16.dtype == jnp.float32 and loss16.dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}

    logits_err = float(jnp.max(jnp.abs(logits16 - logits32)) / jnp.max(jnp.abs(logits32)))
    loss_err = float(abs(loss16 - loss32) / abs(loss32))
    flat32, flat16 = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads32, grads16))
    grad_err = float(jnp.linalg.norm(flat16 - flat32) / jnp.linalg.norm(flat32))
    print(f"{name}: logits {logits_err:.2e} loss {loss_err:.2e} grads {grad_err:.2e}")
    assert logits_err < LOGITS_RTOL
    assert loss_err < LOSS_RTOL
    assert grad_err < GRAD_RTOL
    # ...and bfloat16 did change something: the comparison above is not float32 against itself.
    assert logits_err > 0


def test_params_and_batch_stats_stay_float32_through_a_train_step():
    cfg = dataclasses.replace(FAMILIES["bn_cnn"][0], dtype="bfloat16")
    model = models.build(cfg)
    tx, schedule = optim.make(OptimizerConfig(name="adam", learning_rate=1e-2), total_steps=10)
    state = init_state(model, tx, jnp.zeros((1, 8, 8, 1)), seed=0)
    train_step = jax.jit(step_lib.make_train_step(model, tx, schedule=schedule))
    batch = {"inputs": IMAGES, "targets": (np.arange(4) % 10).astype(np.int32), "mask": np.ones(4, np.float32)}
    new_state, metrics = train_step(state, batch)
    for tree in (new_state.params, new_state.model_state, new_state.opt_state):
        assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)} == {
            jnp.dtype(jnp.float32)}
    # The step moved the parameters (an update too small for bfloat16 would still register).
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(changed))
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize("name", ["seed_cnn", "mlp", "lstm_lm", "transformer_lm"])
@pytest.mark.parametrize("field", ["dtype", "param_dtype"])
def test_a_bad_dtype_is_a_one_line_config_error(name, field):
    bad = dataclasses.replace(FAMILIES[name][0], **{field: "float16"})
    with pytest.raises(ConfigError, match=f"^model.{field} must be one of float32, bfloat16, got 'float16'$"):
        dataclasses.replace(config_lib.default_config(), model=bad)
