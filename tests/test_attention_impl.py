"""model.attention_impl: which jax.nn.dot_product_attention implementation the transformers use."""

import os

import jax
import jax.numpy as jnp
import pytest

from jaxmodels import config as config_lib
from jaxmodels import models
from jaxmodels.errors import ConfigError
from jaxmodels.models import TransformerLMConfig


def _logits(impl, attention="jax"):
    cfg = TransformerLMConfig(num_layers=1, num_heads=2, d_model=16, max_len=8, vocab_size=11,
                              attention=attention, attention_impl=impl)
    model = models.build(cfg)
    tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 11
    variables = model.init(jax.random.key(0), tokens)
    return model.apply(variables, tokens)


def test_xla_is_what_jax_picks_by_default():
    assert jnp.array_equal(_logits("xla"), _logits(None))


def test_auto_takes_the_einsum_form_on_cpu_unless_a_kernel_is_named():
    """attention="auto" (the default): the hand-written blocked form on CPU, so its logits are
    close to but not bit-equal with XLA's; naming an implementation makes it XLA's exactly."""
    assert jnp.array_equal(_logits("xla", "auto"), _logits("xla"))
    auto, ops = _logits(None, "auto"), _logits(None, "blocked_vjp")
    if jax.default_backend() == "cpu":
        assert jnp.array_equal(auto, ops)
    else:
        assert jnp.array_equal(auto, _logits(None))
    assert jnp.allclose(auto, _logits(None), atol=1e-5)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN runs on a GPU")
def test_cudnn_off_a_gpu_is_one_line_naming_the_fix():
    with pytest.raises(ValueError, match="attention_impl=cudnn needs an NVIDIA GPU.*attention_impl=none"):
        _logits("cudnn")


def test_the_override_parses_and_rejects_unknown_names():
    cfg = config_lib.load(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                       "experiments", "configs", "gpt_shakespeare.py"))
    assert config_lib.apply_overrides(cfg, ["model.attention_impl=cudnn"]).model.attention_impl == "cudnn"
    assert config_lib.apply_overrides(cfg, ["model.attention_impl=none"]).model.attention_impl is None
    with pytest.raises(ConfigError, match="attention_impl"):
        config_lib.apply_overrides(cfg, ["model.attention_impl=flash"])
