"""Autoregressive sampling from a trained language model, compiled once.

Both LM families expose the same decoding interface: `init_cache(batch_size, max_len)` and
`decode(tokens_BxT, cache) -> (logits_BxTxV, cache)`; for the Transformer the cache holds keys
and values, for an RNN the carried state. `make_generate` builds one jitted function that feeds
the prompt and then its own samples through `decode` one token at a time inside a
`lax.while_loop`, so any prompt length and any sampling settings reuse one compiled program
(temperature, top-k and top-p are traced values, not static ones). A Transformer generates past
its context by sliding it (see `make_generate`).

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); S key positions (a KV cache's buffer length); V vocabulary.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import sys
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels import config as config_lib
from jaxmodels import models
from jaxmodels.errors import ConfigError, UserError
from jaxmodels.training import checkpoint, tasks


def filter_logits(logits_BxV: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Sets to -inf every logit outside the top-k (k <= 0: no limit) and outside the smallest set
    whose probability reaches top_p (top_p >= 1: no limit). The most likely token always stays."""
    vocab = logits_BxV.shape[-1]
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
    kth_B = jnp.take_along_axis(sorted_BxV, jnp.broadcast_to(k - 1, (logits_BxV.shape[0], 1)), axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # A token is kept while the mass of the tokens strictly ahead of it is below top_p.
    mass_ahead_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_sorted = (mass_ahead_BxV < top_p) | (jnp.arange(vocab) == 0)[None, :]
    # The smallest logit kept by top-p, mapped back from sorted order as a threshold.
    pth_B = jnp.min(jnp.where(keep_sorted, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    threshold_B = jnp.maximum(kth_B, pth_B)
    return jnp.where(logits_BxV >= threshold_B, logits_BxV, -jnp.inf)


def sample_token(logits_BxV: jax.Array, key: jax.Array, temperature: jax.Array,
                 top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """One token per row: argmax when temperature == 0, else a filtered categorical sample."""
    greedy_B = jnp.argmax(logits_BxV, axis=-1)
    scaled = filter_logits(logits_BxV / jnp.maximum(temperature, 1e-6), top_k, top_p)
    sampled_B = jax.random.categorical(key, scaled, axis=-1)
    return jnp.where(temperature > 0, sampled_B, greedy_B).astype(jnp.int32)


def make_generate(model: nn.Module, *, buffer_len: int, context: int | None) -> Callable:
    """Returns jitted `generate(variables, prompt_BxS, prompt_len, num_new, key, temperature,
    top_k, top_p) -> tokens_BxS` with S = buffer_len.

    `prompt_BxS` holds the prompt in its first `prompt_len` positions (the rest is ignored);
    the result holds the prompt followed by `num_new` generated tokens (then zeros). Requires
    1 <= prompt_len and prompt_len + num_new <= buffer_len.

    `context` is the longest sequence the model attends over (a Transformer's max_len; None for
    an RNN, whose carried state has no limit). When a Transformer's cache is full, it is rebuilt
    from the last context // 2 tokens and decoding continues: a sliding context, recomputed
    once every context // 2 tokens rather than for every token.
    """
    cache_len = context if context is not None else buffer_len
    keep = max(1, cache_len // 2)

    def generate(variables, prompt_BxS, prompt_len, num_new, key, temperature, top_k, top_p):
        batch = prompt_BxS.shape[0]
        empty_cache = model.apply(variables, batch, cache_len, method="init_cache")
        total = prompt_len + num_new

        def step_one(i, tokens_BxS, cache):
            current_Bx1 = jax.lax.dynamic_slice_in_dim(tokens_BxS, i, 1, axis=1)
            logits_Bx1xV, cache = model.apply(variables, current_Bx1, cache, method="decode")
            return logits_Bx1xV[:, -1], cache

        def refill(i, tokens_BxS, cache):
            del cache  # full: start again from the last `keep` tokens, ending with token i
            window_BxT = jax.lax.dynamic_slice_in_dim(tokens_BxS, i - keep + 1, keep, axis=1)
            logits_BxTxV, cache = model.apply(variables, window_BxT, empty_cache, method="decode")
            return logits_BxTxV[:, -1], cache

        def body(carry):
            i, tokens_BxS, cache = carry
            if context is None:
                logits_BxV, cache = step_one(i, tokens_BxS, cache)
            else:
                logits_BxV, cache = jax.lax.cond(cache.index >= cache_len, refill, step_one,
                                                 i, tokens_BxS, cache)
            sampled_B = sample_token(logits_BxV.astype(jnp.float32), jax.random.fold_in(key, i),
                                     temperature, top_k, top_p)
            # Inside the prompt the next token is given; after it, it is the sample.
            given_B = jax.lax.dynamic_slice_in_dim(tokens_BxS, i + 1, 1, axis=1)[:, 0]
            next_B = jnp.where(i + 1 < prompt_len, given_B, sampled_B)
            tokens_BxS = jax.lax.dynamic_update_slice_in_dim(tokens_BxS, next_B[:, None], i + 1, axis=1)
            return i + 1, tokens_BxS, cache

        def cond(carry):
            return carry[0] < total - 1

        keep_1xS = (jnp.arange(buffer_len) < prompt_len)[None, :]
        tokens_BxS = jnp.where(keep_1xS, prompt_BxS, 0).astype(jnp.int32)
        _, tokens_BxS, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), tokens_BxS, empty_cache))
        return tokens_BxS

    return jax.jit(generate)


@functools.lru_cache(maxsize=16)
def _generator(model_config, buffer_len: int, context: int | None) -> Callable:
    """`make_generate` for a model config (a frozen dataclass), kept: a notebook sampling the
    same model again, with any prompt or settings in the same length bucket, reuses the
    compiled program instead of tracing a new function."""
    return make_generate(models.build(model_config), buffer_len=buffer_len, context=context)


def context_limit(model_config) -> int | None:
    """The longest sequence a model attends over at once (None: unbounded, as for RNNs)."""
    return getattr(model_config, "max_len", None)


def _bucket(n: int) -> int:
    """Buffer lengths come in powers of two (>= 256) so nearby requests share a compile."""
    return max(256, 1 << (n - 1).bit_length())


def read_config(workdir: pathlib.Path) -> config_lib.Config:
    """The run's config.json; a missing, corrupt or foreign one is a one-line UserError."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.is_file():
        raise UserError(f"no config.json in {str(workdir)!r}: pass the --workdir of a trained language model")
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise TypeError(f"it holds a JSON {type(d).__name__}, not an object")
        return config_lib.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}: restore the config.json the run wrote") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
        why = f"missing key {e}" if isinstance(e, KeyError) else (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{path} is not a jaxmodels config ({why}): restore the config.json the "
                        f"run wrote, or pass the --workdir of a trained language model") from None


def read_tokenizer(workdir: pathlib.Path):
    """The run's tokenizer.json; a corrupt or truncated one is a one-line UserError."""
    try:
        return tasks.load_tokenizer(workdir)
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError,
            RuntimeError) as e:  # RuntimeError: sentencepiece refusing a damaged model
        why = f"missing key {e}" if isinstance(e, KeyError) else (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{pathlib.Path(workdir) / tasks.TOKENIZER_FILE} cannot be read ({why}): "
                        f"it is corrupt or truncated; relaunch the run's train command, which "
                        f"writes it again from the data") from None


def generate_text(workdir, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
    """Prompt plus continuation from the language model trained in `workdir`."""
    workdir = pathlib.Path(workdir)
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    # NaN passes every comparison test, so finiteness is checked first.
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"--temperature must be >= 0 and finite (0 is greedy), got {temperature}")
    if top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 keeps every token), got {top_k}")
    if not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    cfg = read_config(workdir)
    model = models.build(cfg.model)
    if not hasattr(model, "decode"):
        raise UserError(f"model kind '{cfg.model.kind}' is not a language model and cannot sample")
    tokenizer = read_tokenizer(workdir)
    prompt_ids = tokenizer.encode(prompt)
    if len(prompt_ids) == 0:
        raise UserError("--prompt is empty: give at least one character to continue from")
    unseen = getattr(tokenizer, "unknown_chars", lambda _: "")(prompt)
    if unseen:
        print(f"jaxmodels: warning: the prompt has characters the tokenizer never saw in "
              f"training ({', '.join(map(repr, unseen))}); the model reads each as the unknown "
              f"token, and it prints as U+FFFD", file=sys.stderr)
    needed = len(prompt_ids) + max_new_tokens
    context = context_limit(cfg.model)
    if context is not None and len(prompt_ids) > context:
        # Keep the prompt's end: that is what the model continues from.
        prompt_ids = prompt_ids[-context:]
        needed = len(prompt_ids) + max_new_tokens
    buffer = _bucket(needed)

    example = jnp.zeros((1, cfg.data.seq_len), jnp.int32)
    abstract = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), example)))
    params = abstract.pop("params")
    variables = checkpoint.restore_weights(workdir, {"params": params, "model_state": dict(abstract)})
    variables = {"params": variables["params"], **variables["model_state"]}

    try:
        hash(cfg.model)
        generate = _generator(cfg.model, buffer, context)
    except TypeError:  # a registered config with unhashable fields: built afresh each call
        generate = make_generate(model, buffer_len=buffer, context=context)
    prompt_1xS = jnp.zeros((1, buffer), jnp.int32).at[0, :len(prompt_ids)].set(jnp.asarray(prompt_ids))
    tokens = generate(variables, prompt_1xS, jnp.int32(len(prompt_ids)), jnp.int32(max_new_tokens),
                      jax.random.key(seed), jnp.float32(temperature), jnp.int32(top_k),
                      jnp.float32(top_p))
    return tokenizer.decode(jax.device_get(tokens)[0, :needed])
