"""Parameter counts and training FLOPs of every model family, analytic.

    acc = flops.account(TransformerLMConfig(..., vocab_size=65), (64,))   # one example's input shape
    acc.model_flops_per_example * batch_size      # FLOPs of one train step: the numerator of MFU
    flops.describe(acc)                           # one line for a log

What is counted (the conventions, stated once):

- A multiply-add is 2 FLOPs. Only matrix products are counted: dense layers, convolutions (kernel
  x in x out x output positions, the taps on a 'same' convolution's zero padding included), the
  recurrent and input matmuls of RNN cells, the attention projections, scores (QK^T) and
  values (PV), and the output head. Elementwise work is not: biases, norms, softmax, activations,
  gates, pooling (also the classifier's masked mean, an einsum of 2 T D), RoPE, embedding
  lookups, the loss and the optimizer update.
- Training = forward + backward. The backward of y = x W computes dW and dx, each as costly as
  the forward: 3x in all. A layer whose x is the raw input (the images or features fed to a
  classifier's first layer) needs no dx, so it costs 2x; token models are 3x throughout, since
  the embedding table is trained through dx. These are the "model FLOPs" of MFU (PaLM, appendix B).
- Causal attention counts only the T(T+1)/2 query-key pairs the mask allows. XLA computes the
  whole T x T square and throws half away; that work is not model FLOPs (and is not added to the
  hardware FLOPs either: they differ from model FLOPs only by rematerialisation).
- Remat (`TransformerCore.remat`, each block under `nn.remat`): the backward re-runs the block's
  forward, except the MLP down projection, whose output the backward never needs (its own
  gradient needs only its input, and the residual sum it feeds is the next block's saved input).
  `hardware_flops_per_example` adds that recomputation.

For a model with no formula here (a user's own), `xla_flops.train_flops_per_example` reads the
training FLOPs from XLA's cost analysis of the compiled step instead.

Checked in tests/test_flops.py: exactly equal to the dot and convolution FLOPs of the traced train
step, and within 10 % of XLA's `cost_analysis()` of the compiled step once its own conventions
are reconciled (it adds elementwise work, skips padding taps, computes the full causal square,
and counts a while-loop body once: scanned layers and RNN time steps are undercounted by it).

Parameter conventions: `params` is every leaf of the "params" collection (BatchNorm's running
statistics are state, not parameters). `non_embedding_params` is Kaplan et al.'s N: the total
minus tables that are looked up rather than multiplied (token embeddings, learned position
tables, ViT's class token). A tied output head is the token table, so it is excluded once; an
untied head is a real matmul and stays in N. For the CNNs, MLP and RNN classifier, which have no
such tables, N equals the total.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

from jaxmodels.accounting import xla_flops
from jaxmodels.errors import ConfigError
from jaxmodels.models import (BatchNormCNNConfig, MLPConfig, RNNClassifierConfig, RNNLMConfig, SeedCNNConfig,
                              TransformerClassifierConfig, TransformerLMConfig, ViTConfig)
from jaxmodels.models.rnn import CELLS, RNNCore
from jaxmodels.models.transformer import TransformerCore


@dataclasses.dataclass(frozen=True)
class Term:
    """One group of matrix products, FLOPs per example.

    `reads_data`: its input is the raw data, so the backward skips the input gradient (2x the
    forward instead of 3x). `recomputed`: re-run in the backward under remat.
    """

    name: str
    forward_flops: int
    reads_data: bool = False
    recomputed: bool = False

    @property
    def training_flops(self) -> int:
        return self.forward_flops * (2 if self.reads_data else 3)


@dataclasses.dataclass(frozen=True)
class Accounting:
    """Parameters and FLOPs of one model on one example's input (see the module docstring).

    tokens_per_example: positions that carry a loss (seq_len for a language model, 1 for a
    classifier), so per-token figures are `*_per_example / tokens_per_example`.
    """

    kind: str
    params: int
    non_embedding_params: int
    tokens_per_example: int
    forward_flops_per_example: int
    model_flops_per_example: int  # forward + backward: the numerator of MFU
    hardware_flops_per_example: int  # model FLOPs + what remat recomputes: the numerator of HFU
    remat: bool
    terms: tuple[Term, ...]

    @property
    def model_flops_per_token(self) -> float:
        return self.model_flops_per_example / self.tokens_per_example

    @property
    def hardware_flops_per_token(self) -> float:
        return self.hardware_flops_per_example / self.tokens_per_example


@dataclasses.dataclass(frozen=True)
class _Parts:
    params: int
    embedding_params: int
    tokens: int
    terms: tuple[Term, ...]


def account(model_config, input_shape: Sequence[int], *, remat: bool | None = None) -> Accounting:
    """Parameter counts and FLOPs of `model_config` on one example of shape `input_shape`.

    input_shape: (H, W, C) for an image model, (seq_len,) for a token model, (T, F) or (H, W, C)
    for the RNN classifier, any shape for the MLP (it flattens). Vocabulary sizes must already be
    resolved (`training.tasks.resolve_model`). `remat=None` takes the config's own setting (a
    Transformer's `remat`; the other families have none); True/False asks "what if".
    Pure arithmetic: nothing is traced or compiled. Bad input is a one-line ConfigError.
    """
    family = _FAMILIES.get(type(model_config))
    if family is None:
        raise ConfigError(f"no FLOP accounting for {type(model_config).__name__}: pass one of the model "
                          f"configs in jaxmodels.models ({', '.join(c.__name__ for c in _FAMILIES)})")
    kind = model_config.kind
    problems = model_config.problems()
    if problems:
        key, message = problems[0]
        raise ConfigError(f"model.{key} {message}")
    shape = tuple(input_shape)
    if not shape or any(not isinstance(n, numbers.Integral) or n <= 0 for n in shape):
        raise ConfigError(f"input_shape={shape!r} for model kind '{kind}': give one example's shape as "
                          f"positive ints, e.g. (28, 28, 1) for an image or (seq_len,) for tokens")
    is_transformer = isinstance(model_config, TransformerCore)
    if remat is None:
        remat = is_transformer and model_config.remat
    elif remat and not is_transformer:
        raise ConfigError(f"remat=True for model kind '{kind}', which has no remat: only the "
                          f"Transformers recompute (model.remat); pass remat=None")
    parts = family(model_config, tuple(int(n) for n in shape), remat)
    forward = sum(t.forward_flops for t in parts.terms)
    model = sum(t.training_flops for t in parts.terms)
    recomputed = sum(t.forward_flops for t in parts.terms if t.recomputed)
    return Accounting(kind=kind, params=parts.params,
                      non_embedding_params=parts.params - parts.embedding_params,
                      tokens_per_example=parts.tokens, forward_flops_per_example=forward,
                      model_flops_per_example=model, hardware_flops_per_example=model + recomputed,
                      remat=bool(remat), terms=parts.terms)


def describe(acc: Accounting) -> str:
    """One line: parameters, training FLOPs per token (or example) and what remat adds."""
    unit = "token" if acc.tokens_per_example > 1 else "example"
    per = acc.tokens_per_example
    line = (f"{acc.kind}: {_si(acc.params)} params ({_si(acc.non_embedding_params)} non-embedding), "
            f"{_si(acc.model_flops_per_example / per, 'FLOP')}/{unit} training "
            f"(forward {_si(acc.forward_flops_per_example / per, 'FLOP')})")
    if acc.hardware_flops_per_example != acc.model_flops_per_example:
        line += f", {_si(acc.hardware_flops_per_example / per, 'FLOP')}/{unit} on hardware with remat"
    return line


def compiled_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled computation (`jax.jit(f).lower(...).compile()`), or None
    when the backend gives none (see `xla_flops.cost_analysis_flops`, which also says why, and
    `xla_flops.train_flops_per_example` for per-example training FLOPs of any model). XLA counts
    a while loop's body once (scanned layers, RNN time steps), so compare it with `account` only
    on unrolled code or after scaling the loop bodies yourself."""
    return xla_flops.cost_analysis_flops(compiled)[0]


# ---------------------------------------------------------------------------------------------
# Families. Each returns the parameter count, the embedding part of it, the tokens per example
# and the matmul terms, for one example.


def _expect_rank(kind: str, shape: tuple[int, ...], rank: int, what: str) -> None:
    if len(shape) != rank:
        raise ConfigError(f"input_shape={shape!r} for model kind '{kind}': expected {what}")


def _need_vocab(cfg) -> int:
    if cfg.vocab_size is None:
        raise ConfigError(f"model.vocab_size is none for model kind '{cfg.kind}': resolve it from the "
                          f"tokenizer first (training.tasks.resolve_model) or set model.vocab_size")
    return cfg.vocab_size


def _dense(name: str, fan_in: int, fan_out: int, positions: int = 1, *, reads_data: bool = False,
           recomputed: bool = False) -> Term:
    return Term(name, 2 * fan_in * fan_out * positions, reads_data=reads_data, recomputed=recomputed)


def _seed_cnn(cfg: SeedCNNConfig, shape, remat) -> _Parts:
    _expect_rank(cfg.kind, shape, 3, "one image (H, W, C)")
    h, w, c = shape
    k, f = cfg.kernel_size, cfg.filters
    flat = (h // 2) * (w // 2) * f  # the 2x2 pool drops an odd trailing row/column
    terms = (_dense("conv", k * k * c, f, h * w, reads_data=True),  # 'same' padding: H x W outputs
             _dense("head", flat, cfg.num_classes))
    params = k * k * c * f + f + flat * cfg.num_classes + cfg.num_classes
    return _Parts(params, 0, 1, terms)


def _bn_cnn(cfg: BatchNormCNNConfig, shape, remat) -> _Parts:
    _expect_rank(cfg.kind, shape, 3, "one image (H, W, C)")
    h, w, c = shape
    terms, params = [], 0
    for b, f in enumerate(cfg.block_filters):
        for i in range(cfg.convs_per_block):
            terms.append(_dense(f"conv{b}_{i}", 9 * c, f, h * w, reads_data=not terms))
            params += 9 * c * f + 2 * f  # no conv bias; BatchNorm scale and shift
            c = f
        h, w = h // 2, w // 2
    if h == 0 or w == 0:
        raise ConfigError(f"input_shape={shape!r} is too small for {len(cfg.block_filters)} pooling "
                          f"blocks of model kind '{cfg.kind}': use fewer model.block_filters")
    flat = h * w * c
    terms += [_dense("hidden", flat, cfg.hidden), _dense("head", cfg.hidden, cfg.num_classes)]
    params += flat * cfg.hidden + cfg.hidden + cfg.hidden * cfg.num_classes + cfg.num_classes
    return _Parts(params, 0, 1, tuple(terms))


def _mlp(cfg: MLPConfig, shape, remat) -> _Parts:
    width = math.prod(shape)
    terms, params = [], 0
    for i, h in enumerate((*cfg.hidden, cfg.num_classes)):
        name = f"dense{i}" if i < len(cfg.hidden) else "head"
        terms.append(_dense(name, width, h, reads_data=not terms))
        params += width * h + h
        width = h
    return _Parts(params, 0, 1, tuple(terms))


def _rnn_stack(cfg: RNNCore, steps: int, features: int, *, reads_data: bool):
    """(params, terms) of the recurrent layers over `steps` time steps."""
    d = cfg.hidden
    g = CELLS[cfg.cell].num_gates * d  # the fused gate units U
    terms, params = [], 0
    for layer in range(cfg.num_layers):
        f = features if layer == 0 else d
        # Hoisted input projection (one matmul over all steps) and the in-scan hidden matmul.
        terms.append(_dense(f"layer{layer} input", f, g, steps, reads_data=reads_data and layer == 0))
        terms.append(_dense(f"layer{layer} recurrent", d, g, steps))
        params += f * g + g + d * g + (d if cfg.cell == "gru" else 0)  # GRU keeps one hidden bias
    return params, terms


def _rnn_lm(cfg: RNNLMConfig, shape, remat) -> _Parts:
    _expect_rank(cfg.kind, shape, 1, "a token window (seq_len,)")
    (t,) = shape
    v = _need_vocab(cfg)
    params, terms = _rnn_stack(cfg, t, cfg.embed_dim, reads_data=False)
    terms.append(_dense("head", cfg.hidden, v, t))
    embedding = v * cfg.embed_dim
    return _Parts(embedding + params + cfg.hidden * v + v, embedding, t, tuple(terms))


def _rnn_classifier(cfg: RNNClassifierConfig, shape, remat) -> _Parts:
    if len(shape) == 3:  # images are read row by row
        t, features = shape[0], shape[1] * shape[2]
    else:
        _expect_rank(cfg.kind, shape, 2, "a sequence (T, F) or an image (H, W, C)")
        t, features = shape
    params, terms = _rnn_stack(cfg, t, features, reads_data=True)
    terms.append(_dense("head", cfg.hidden, cfg.num_classes))
    return _Parts(params + cfg.hidden * cfg.num_classes + cfg.num_classes, 0, 1, tuple(terms))


def _blocks(cfg: TransformerCore, t: int, *, causal: bool, remat: bool):
    """(params, terms) of the blocks plus the final norm, over a sequence of t positions."""
    d, h, k, dh, f, n = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.ff_width, cfg.num_layers
    if t > cfg.max_len:
        raise ConfigError(f"a sequence of {t} positions is longer than model.max_len={cfg.max_len}: "
                          f"raise model.max_len or shorten the input")
    up_matrices = 2 if cfg.mlp == "swiglu" else 1  # SwiGLU's gate is a second D x F matmul
    norm = 2 * d if cfg.norm == "layernorm" else d
    per_layer = 2 * norm + d * (h + 2 * k) * dh + h * dh * d + (up_matrices + 1) * d * f
    # Query-key pairs each head scores; each pair costs Dh multiply-adds for QK^T and Dh for PV.
    pairs = t * (t + 1) // 2 if causal else t * t
    terms = (
        _dense("attention q/k/v", d, (h + 2 * k) * dh, t * n, recomputed=remat),
        Term("attention scores", 2 * h * dh * pairs * n, recomputed=remat),
        Term("attention values", 2 * h * dh * pairs * n, recomputed=remat),
        _dense("attention out", h * dh, d, t * n, recomputed=remat),
        _dense("mlp up" + (" and gate" if up_matrices == 2 else ""), d, up_matrices * f, t * n,
               recomputed=remat),
        _dense("mlp down", f, d, t * n),  # never recomputed: see the module docstring
    )
    return n * per_layer + norm, list(terms)


def _positions_params(cfg: TransformerCore) -> int:
    return cfg.max_len * cfg.d_model if cfg.positional == "learned" else 0


def _transformer_lm(cfg: TransformerLMConfig, shape, remat) -> _Parts:
    _expect_rank(cfg.kind, shape, 1, "a token window (seq_len,)")
    (t,) = shape
    v = _need_vocab(cfg)
    params, terms = _blocks(cfg, t, causal=True, remat=remat)
    terms.append(_dense("logits" + (" (tied)" if cfg.tie_embeddings else ""), cfg.d_model, v, t))
    embedding = v * cfg.d_model + _positions_params(cfg)
    head = 0 if cfg.tie_embeddings else cfg.d_model * v
    return _Parts(embedding + params + head, embedding, t, tuple(terms))


def _transformer_classifier(cfg: TransformerClassifierConfig, shape, remat) -> _Parts:
    _expect_rank(cfg.kind, shape, 1, "a token sequence (seq_len,)")
    (t,) = shape
    v = _need_vocab(cfg)
    # Padding is data-dependent, so every position of the window is counted.
    params, terms = _blocks(cfg, t, causal=False, remat=remat)
    terms.append(_dense("head", cfg.d_model, cfg.num_classes))
    embedding = v * cfg.d_model + _positions_params(cfg)
    return _Parts(embedding + params + cfg.d_model * cfg.num_classes + cfg.num_classes, embedding, 1,
                  tuple(terms))


def _vit(cfg: ViTConfig, shape, remat) -> _Parts:
    _expect_rank(cfg.kind, shape, 3, "one image (H, W, C)")
    hi, wi, c = shape
    p = cfg.patch_size
    if hi % p or wi % p:
        raise ConfigError(f"model.patch_size={p} must divide the image size {hi}x{wi}: pick a divisor")
    patches, q = (hi // p) * (wi // p), p * p * c
    cls = cfg.pool == "cls"
    params, terms = _blocks(cfg, patches + cls, causal=False, remat=remat)
    terms.insert(0, _dense("patch embedding", q, cfg.d_model, patches, reads_data=True))
    terms.append(_dense("head", cfg.d_model, cfg.num_classes))
    embedding = _positions_params(cfg) + (cfg.d_model if cls else 0)
    params += q * cfg.d_model + cfg.d_model + cfg.d_model * cfg.num_classes + cfg.num_classes
    return _Parts(params + embedding, embedding, 1, tuple(terms))


_FAMILIES = {
    SeedCNNConfig: _seed_cnn,
    BatchNormCNNConfig: _bn_cnn,
    MLPConfig: _mlp,
    RNNLMConfig: _rnn_lm,
    RNNClassifierConfig: _rnn_classifier,
    TransformerLMConfig: _transformer_lm,
    TransformerClassifierConfig: _transformer_classifier,
    ViTConfig: _vit,
}


def _si(x: float, unit: str = "") -> str:
    """3 significant digits and an SI prefix: _si(5.02e6, "FLOP") == "5.02 MFLOP", _si(789e3) == "789k"."""
    value, prefix = x, ""
    for factor, name in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            value, prefix = x / factor, name
            break
    return f"{value:.3g}{' ' if unit else ''}{prefix}{unit}"
