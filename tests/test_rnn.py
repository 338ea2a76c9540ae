"""RNN family: cells against NumPy references, scan == loop, explicit carry and decoding,
causality, shapes and logical names, no retrace, a real learning check, config problems."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels import config as config_lib
from jaxmodels import models
from jaxmodels.config import OptimizerConfig
from jaxmodels.models import rnn
from jaxmodels.training import optim
from jaxmodels.training import step as step_lib
from jaxmodels.training.state import init_state

CELLS = ["elman", "lstm", "gru"]


# Compilation dominates this file's run time (every distinct program is an XLA compile; an
# eager `apply` recompiles its scan on each call, and every eager op on a new shape compiles too),
# so tests jit each function once and reuse it, prepare data in NumPy, and mostly take their
# parameters from shapes alone rather than running `init`.


def _randomize(tree, seed=0, scale=0.5):
    """Every array (or shape) in `tree` replaced by N(0, scale^2) values: random biases and
    carries, unlike zeros at init, make any slip in them visible."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(scale * rng.normal(size=x.shape), jnp.float32), tree)


def _random_params(model, *example, seed=0):
    """Random parameters shaped like `model.init(key, *example)`'s, without compiling init."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), *example)["params"]
    return _randomize(nn.meta.unbox(shapes), seed)


def _random_carry(cfg, batch_size, seed=1):
    return _randomize(rnn.zero_carry(cfg, batch_size), seed, scale=0.8)


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ---------------------------------------------------------------------------------------------
# NumPy references: one step per cell, written from the published gate equations (PyTorch's
# nn.RNN / nn.LSTM / nn.GRU documentation) with one weight matrix per gate, float64.


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _gates(w, n):
    """The n per-gate blocks of a fused [in, n*D] kernel (or [n*D] bias), in order."""
    return np.split(w, n, axis=-1)


def _ref_elman(state, x, p_in, p_rec):
    h = state
    return np.tanh(x @ p_in["kernel"] + p_in["bias"] + h @ p_rec["kernel"])


def _ref_lstm(state, x, p_in, p_rec):
    c, h = state
    w_ii, w_if, w_ig, w_io = _gates(p_in["kernel"], 4)
    b_i, b_f, b_g, b_o = _gates(p_in["bias"], 4)
    w_hi, w_hf, w_hg, w_ho = _gates(p_rec["kernel"], 4)
    i = _sigmoid(x @ w_ii + b_i + h @ w_hi)
    f = _sigmoid(x @ w_if + b_f + h @ w_hf)
    g = np.tanh(x @ w_ig + b_g + h @ w_hg)
    o = _sigmoid(x @ w_io + b_o + h @ w_ho)
    c = f * c + i * g
    return (c, o * np.tanh(c))


def _ref_gru(state, x, p_in, p_rec):
    h = state
    w_ir, w_iz, w_in = _gates(p_in["kernel"], 3)
    b_r, b_z, b_in = _gates(p_in["bias"], 3)
    w_hr, w_hz, w_hn = _gates(p_rec["kernel"], 3)
    b_hn = p_rec["bias"]
    r = _sigmoid(x @ w_ir + b_r + h @ w_hr)
    z = _sigmoid(x @ w_iz + b_z + h @ w_hz)
    n = np.tanh(x @ w_in + b_in + r * (h @ w_hn + b_hn))
    return (1.0 - z) * n + z * h


REFERENCES = {"elman": _ref_elman, "lstm": _ref_lstm, "gru": _ref_gru}


def _output(cell, state):
    return state[1] if cell == "lstm" else state


@pytest.mark.parametrize("cell", CELLS)
def test_cell_against_numpy_reference(cell):
    """One step (t = 0) and a 5-step sequence, from a random non-zero initial state."""
    cfg = rnn.RNNCore(cell=cell, hidden=5, num_layers=1)
    stack = rnn.RNNStack(cfg)
    x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    params = _random_params(stack, x)
    carry = _random_carry(cfg, 3)
    h_BxTxD, final = jax.jit(stack.apply)({"params": params}, x, carry)

    p = _np(params["layer_0"])
    state = _np(carry[0])
    for t in range(x.shape[1]):
        state = REFERENCES[cell](state, x[:, t].astype(np.float64), p["input"], p["recurrent"])
        np.testing.assert_allclose(h_BxTxD[:, t], _output(cell, state), rtol=1e-5, atol=1e-6,
                                   err_msg=f"step {t}")
    for got, want in zip(jax.tree.leaves(final[0]), jax.tree.leaves(state)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_scan_equals_python_loop_over_the_cell(cell):
    """The layer-by-layer scan against a step-by-step loop (time outside, layers inside) that
    calls the cell module itself on each step."""
    cfg = rnn.RNNCore(cell=cell, hidden=4, num_layers=3)
    stack = rnn.RNNStack(cfg)
    x = np.random.default_rng(2).normal(size=(2, 6, 3)).astype(np.float32)
    params = _random_params(stack, x)
    carry = _random_carry(cfg, 2)
    h_BxTxD, final = jax.jit(stack.apply)({"params": params}, x, carry)

    step = jax.jit(rnn.CELLS[cell](cfg).apply)
    state = list(carry)
    outs = []
    for t in range(x.shape[1]):
        h = x[:, t]
        for layer in range(cfg.num_layers):
            p = jax.tree.map(np.asarray, params[f"layer_{layer}"])
            state[layer], h = step({"params": p["recurrent"]}, state[layer], np.asarray(h),
                                   p["input"]["kernel"], p["input"]["bias"])
        outs.append(h)
    np.testing.assert_allclose(h_BxTxD, np.stack(outs, axis=1), rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 final, tuple(state))


# ---------------------------------------------------------------------------------------------
# The language model: explicit carry, decoding, causality.


def _lm(cell="lstm", **kw):
    cfg = rnn.RNNLMConfig(cell=cell, hidden=8, num_layers=2, vocab_size=11, embed_dim=6, **kw)
    model = rnn.RNNLM(cfg)
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, size=(2, 8)).astype(np.int32)
    return model, {"params": _random_params(model, tokens)}, tokens


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # a tuple carry per layer, and a bare array
def test_carry_continues_a_sequence(cell):
    """[x1; x2] in one call == x1, then x2 from x1's final carry (truncated BPTT)."""
    model, variables, tokens = _lm(cell)
    run = jax.jit(lambda v, t, c: model.apply(v, t, carry=c, return_carry=True))
    zeros = rnn.zero_carry(model.config, tokens.shape[0])
    full, full_carry = run(variables, tokens, zeros)
    first, carry = run(variables, tokens[:, :4], zeros)
    second, carry = run(variables, tokens[:, 4:], carry)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), carry, full_carry)
    # And the carry matters: starting x2 from zeros gives something else.
    fresh, _ = run(variables, tokens[:, 4:], zeros)
    assert not np.allclose(fresh, second, atol=1e-3)


def test_decode_prefill_then_steps_equals_full_call():
    model, variables, tokens = _lm("gru")
    full = jax.jit(model.apply)(variables, tokens)  # carry=None: zeros
    cache = model.apply(variables, tokens.shape[0], 32, method="init_cache")
    assert set(cache) == {"carry", "index"}
    assert cache["index"].dtype == jnp.int32 and cache["index"].shape == ()
    decode = jax.jit(lambda v, t, c: model.apply(v, t, c, method="decode"))
    logits, cache = decode(variables, tokens[:, :5], cache)
    pieces = [logits]
    for t in range(5, tokens.shape[1]):
        logits, cache = decode(variables, tokens[:, t:t + 1], cache)
        pieces.append(logits)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(cache["index"]) == tokens.shape[1] and cache["index"].dtype == jnp.int32


def test_logits_do_not_depend_on_later_tokens():
    model, variables, tokens = _lm("lstm")
    forward = jax.jit(model.apply)  # one compile: every call below has the same shapes
    before = forward(variables, tokens)
    for t in range(tokens.shape[1] - 1):
        # Every token after t changed: logits up to t are bit-identical, later ones move.
        changed = tokens.copy()
        changed[:, t + 1:] = (tokens[:, t + 1:] + 1) % model.config.vocab_size
        after = forward(variables, changed)
        np.testing.assert_array_equal(before[:, :t + 1], after[:, :t + 1], err_msg=f"t={t}")
        assert not np.allclose(before[:, t + 1:], after[:, t + 1:], atol=1e-4)


def test_lm_shapes_dtypes_and_missing_vocab():
    model, _, tokens = _lm("elman")
    variables = jax.eval_shape(model.init, jax.random.key(0), tokens)  # shapes only: no compile
    logits = jax.eval_shape(model.apply, nn.meta.unbox(variables), tokens)
    assert logits.shape == (2, 8, 11) and logits.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.meta.unbox(variables["params"])))
    with pytest.raises(ValueError, match="vocab_size"):
        jax.eval_shape(rnn.RNNLM(rnn.RNNLMConfig()).init, jax.random.key(0), tokens)


def test_dropout_only_in_training():
    model, variables, tokens = _lm("lstm", dropout=0.5)
    run = jax.jit(lambda v, t, key, train: model.apply(v, t, train=train, rngs={"dropout": key}),
                  static_argnums=3)
    # "rbg" keys: the wiring under test is the same, and their random bits compile about twice
    # as fast on CPU as the default threefry's.
    key1, key2 = jax.random.key(1, impl="rbg"), jax.random.key(2, impl="rbg")
    eval_a, eval_b = run(variables, tokens, key1, False), run(variables, tokens, key2, False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_a, train_b = run(variables, tokens, key1, True), run(variables, tokens, key2, True)
    assert not np.allclose(train_a, eval_a, atol=1e-4)
    assert not np.allclose(train_a, train_b, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The classifier.


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # where the final h sits in the carry differs
def test_classifier_reads_images_row_by_row(cell):
    cfg = rnn.RNNClassifierConfig(cell=cell, hidden=8, num_layers=2, num_classes=10)
    model = rnn.RNNClassifier(cfg)
    images = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype(np.float32)
    params = _random_params(model, images)
    gates = {"elman": 1, "lstm": 4, "gru": 3}[cell]
    # 28 pixels per step in, and the image equals the [B, 28 rows, 28 pixels] sequence.
    assert params["rnn"]["layer_0"]["input"]["kernel"].shape == (28, gates * 8)
    run = jax.jit(lambda p, x: model.apply({"params": p}, x, return_carry=True))
    logits, carry = run(params, images)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    np.testing.assert_allclose(run(params, images.reshape(3, 28, 28))[0], logits, rtol=1e-6)
    # Rows are time: reversing them changes the answer.
    assert not np.allclose(run(params, images[:, ::-1])[0], logits, atol=1e-4)
    # Logits come from the last layer's final hidden state.
    head = params["head"]
    h_last = _output(cell, carry[-1])
    np.testing.assert_allclose(logits, h_last @ head["kernel"] + head["bias"][None, :],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected a sequence"):
        jax.eval_shape(model.apply, {"params": params}, images[..., 0, 0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_every_parameter_has_logical_axis_names(kind, cell):
    if kind == "lm":
        model = rnn.RNNLM(rnn.RNNLMConfig(cell=cell, hidden=4, num_layers=2, vocab_size=7, embed_dim=3))
        x = np.zeros((1, 3), np.int32)
    else:
        model = rnn.RNNClassifier(rnn.RNNClassifierConfig(cell=cell, hidden=4, num_layers=2))
        x = np.zeros((1, 3, 5), np.float32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), x)["params"]  # boxes survive eval_shape
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(v, nn.LogicallyPartitioned) for v in leaves)
    for box in leaves:
        assert len(box.names) == len(box.value.shape)
        assert set(box.names) <= {"embed", "mlp", "vocab", "classes"}


# ---------------------------------------------------------------------------------------------
# Compilation and training.


def test_jitted_forward_traces_once():
    model, variables, tokens = _lm("gru")
    traces = []

    @jax.jit
    def forward(v, t):
        traces.append(1)
        return model.apply(v, t)

    forward(variables, tokens).block_until_ready()
    forward(variables, (tokens + 1) % 11).block_until_ready()
    assert len(traces) == 1


PATTERN_T = 24


@pytest.fixture(scope="module")
def lstm_lm():
    """A tiny LSTM LM with a real (not random) init, its optimizer and train step: initialising
    is one of the slowest compiles here (a QR per gate block), so two tests share it."""
    model = rnn.RNNLM(rnn.RNNLMConfig(cell="lstm", hidden=16, vocab_size=5, embed_dim=8))
    tx, schedule = optim.make(OptimizerConfig(name="adam", learning_rate=3e-2), total_steps=30)
    state = jax.jit(lambda: init_state(model, tx, jnp.zeros((1, PATTERN_T), jnp.int32), seed=0))()
    return model, tx, schedule, state


def test_lstm_init_forget_bias_one_and_orthogonal_gate_blocks(lstm_lm):
    *_, state = lstm_lm
    layer = state.params["rnn"]["layer_0"]
    b_i, b_f, b_g, b_o = _gates(np.asarray(layer["input"]["bias"]), 4)
    np.testing.assert_array_equal(b_f, np.ones(16))
    np.testing.assert_array_equal(np.concatenate([b_i, b_g, b_o]), np.zeros(48))
    for block in _gates(np.asarray(layer["recurrent"]["kernel"]), 4):
        np.testing.assert_allclose(block.T @ block, np.eye(16), atol=1e-5)


def test_train_step_learns_a_pattern_that_needs_memory(lstm_lm):
    """Period-6 sequence 0 1 2 0 3 4: after a 0 the next token is 1 or 3 depending on the token
    before it. A model that sees only the current token cannot go below ln(2)/3 ~ 0.23 (a third
    of the targets follow a 0 and are a coin flip to it); the LSTM must use its state."""
    model, tx, schedule, state = lstm_lm
    seq = np.tile(np.array([0, 1, 2, 0, 3, 4], np.int32), 8)
    b, t = 8, PATTERN_T
    windows = np.stack([seq[s:s + t + 1] for s in range(b)])  # every phase of the pattern
    batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:], "mask": np.ones((b, t), np.float32)}
    train_step = step_lib.make_train_step(model, tx, schedule=schedule)
    traces = []

    def counted(s, bt):
        traces.append(1)
        return train_step(s, bt)

    jitted = jax.jit(counted)
    losses = []
    for _ in range(30):
        state, metrics = jitted(state, batch)
        losses.append(float(metrics["loss"]))
    assert len(traces) == 1
    assert losses[0] > 1.2  # ~ln(5) at init
    assert losses[-1] < 0.1, losses
    assert int(state.step) == 30


# ---------------------------------------------------------------------------------------------
# Configs.


@pytest.mark.parametrize("cls", [rnn.RNNLMConfig, rnn.RNNClassifierConfig])
@pytest.mark.parametrize("field, value", [("hidden", 0), ("hidden", -3), ("num_layers", 0),
                                          ("dropout", 1.0), ("dropout", -0.1)])
def test_problems_name_the_bad_field(cls, field, value):
    assert cls().problems() == []
    out = cls(**{field: value}).problems()
    assert [f for f, _ in out] == [field]
    assert all("\n" not in message for _, message in out)


def test_problems_of_model_specific_fields():
    assert rnn.RNNLMConfig(vocab_size=None).problems() == []
    assert [f for f, _ in rnn.RNNLMConfig(vocab_size=0).problems()] == ["vocab_size"]
    assert [f for f, _ in rnn.RNNLMConfig(embed_dim=0).problems()] == ["embed_dim"]
    assert [f for f, _ in rnn.RNNClassifierConfig(num_classes=0).problems()] == ["num_classes"]


def test_registered_with_flat_overrides_and_json_round_trip():
    assert models.config_class("rnn_lm") is rnn.RNNLMConfig
    assert models.config_class("rnn_classifier") is rnn.RNNClassifierConfig
    assert isinstance(models.build(rnn.RNNLMConfig(vocab_size=5)), rnn.RNNLM)
    assert "kind" not in {f.name for f in dataclasses.fields(rnn.RNNLMConfig)}
    base = config_lib.Config(model=rnn.RNNClassifierConfig())
    cfg = config_lib.apply_overrides(base, ["model.hidden=32", "model.cell=gru", "model.num_layers=2"])
    assert cfg.model == rnn.RNNClassifierConfig(cell="gru", hidden=32, num_layers=2)
    assert config_lib.from_dict(config_lib.to_dict(cfg)) == cfg
    with pytest.raises(config_lib.ConfigError, match="model.dropout"):
        config_lib.apply_overrides(base, ["model.dropout=1.5"])
