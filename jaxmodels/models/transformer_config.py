"""The transformers' configs: the fields every transformer shares (`TransformerCore`) and the
three models' own (`TransformerLMConfig`, `TransformerClassifierConfig`, `ViTConfig`).

Shape names (the package glossary in jaxmodels/models/__init__.py): B batch; T sequence positions
(queries, or an RNN's time steps); D model width (an RNN's hidden state); H query heads; G
key/value heads (G divides H); Dh head dim; F features other than the model width (an MLP's hidden
units, a flattened image, an RNN's per-step input); V vocabulary; K classes; L layers; M longest
sequence (max_len).
"""

import dataclasses
from typing import Literal

from jaxmodels.models import layers, precision


@dataclasses.dataclass(frozen=True)
class TransformerCore(precision.Precision):
    """The fields every transformer shares; they override flat, as `model.num_layers=6`.

    `dtype` and `param_dtype` (the compute and the parameter dtype) come from `Precision`, as
    for every other family."""

    num_layers: int = 4
    num_heads: int = 4
    # None: as many as num_heads (multi-head). Fewer: grouped-query attention (1: multi-query).
    num_kv_heads: int | None = None
    d_model: int = 128
    # None: 4 * d_model for gelu; for swiglu the multiple of 8 at or above 8/3 * d_model, which
    # keeps the parameter count of the three-matrix MLP equal to gelu's two (Shazeer, 2020).
    d_ff: int | None = None
    # On the embeddings and on each residual branch, in training only.
    dropout: float = 0.0
    # The longest sequence (and KV cache) the positional encoding supports.
    max_len: int = 256
    positional: Literal["sinusoidal", "learned", "rope"] = "learned"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    # Knobs that imported checkpoints (jaxmodels/interop/hf.py) need; the defaults are the
    # model as it always was. norm_eps None: flax's own epsilon (1e-6); GPT-2 uses 1e-5.
    norm_eps: float | None = None
    # Biases on the attention projections and the MLP's matrices (GPT-2 has them, Llama not).
    bias: bool = False
    # The rotary base (Llama's rope_theta).
    rope_base: float = 10000.0
    # One compiled block scanned over depth: compile time independent of num_layers.
    scan_layers: bool = False
    # Recompute each block's activations in the backward pass: memory for FLOPs.
    remat: bool = False
    # How softmax(QK^T)V is computed (models/attention_ops.py); all are the same function.
    # "jax": jax.nn.dot_product_attention (fused kernels where the backend has them); "einsum":
    # two head-major einsums; "blocked": causal attention by blocks of `attention_block` queries
    # that skips the blocks above the diagonal (the LM's training pass; anything else, such as
    # decoding or bidirectional attention, runs "einsum"). "_vjp": the same forward with a
    # hand-written backward. "auto" is "blocked_vjp" on CPU, where it measured 1.31x (1.23-1.46
    # over repeats) the "jax" form on a 6x384 GPT training step at T=256 and 1.14x on a 4x128
    # one at T=64 (benchmarks/transformer_levers.py), and "jax" on accelerators or when
    # `attention_impl` names a kernel.
    attention: Literal["auto", "jax", "einsum", "blocked", "einsum_vjp", "blocked_vjp"] = "auto"
    attention_block: int = 128
    # One [D, G, H/G + 2, Dh] matrix for the query, key and value projections (and one
    # [D, 2, F] for SwiGLU's gate and up projections) instead of separate ones: one matmul in
    # place of three (two). The same function; the parameters are named and shaped differently
    # ("qkv", "gate_up"), so checkpoints of one layout do not load into the other
    # (`fuse_params` converts).
    fused_projections: bool = False
    # With attention="jax": jax.nn.dot_product_attention's `implementation` for full-sequence
    # attention (training, evaluation, prefill without a cache): None lets JAX choose (XLA
    # today); "cudnn" is cuDNN's fused flash attention (NVIDIA GPUs, bfloat16/float16 compute);
    # "xla" forces XLA. Setting it makes "auto" take "jax" on CPU too. Decoding through the KV
    # cache never passes one (its mask over the buffer is a boolean array).
    attention_impl: Literal["xla", "cudnn"] | None = None
    # "mup": maximal update parametrization for Adam-family optimizers (Yang et al., 2022): the
    # readout sees its input times base_width/d_model (and starts at zero unless tied to the
    # embedding), attention logits are q.k/Dh (times a constant that makes them q.k/sqrt(Dh) at
    # base width) instead of q.k/sqrt(Dh), and hidden matrices train at the learning rate times
    # base_width/d_model (training/mup.py). At d_model == base_width the same function of the
    # same parameters as "standard", trained the same way; only a separate readout's zero init
    # differs. The width is d_model; the MLP width (4 d_model, or d_ff scaled along) and the
    # head dim grow with it, the number of heads is fixed.
    parametrization: Literal["standard", "mup"] = "standard"
    base_width: int = 128
    # A workdir (trained, or an imported checkpoint: `jaxmodels import-hf`) whose weights a
    # fresh run starts from (fine-tuning); a resumed run reads its own checkpoint instead.
    # training/init_from.py.
    init_from: str | None = None

    # Logical axes whose size grows with the width (see parametrization); "heads", "kv",
    # "vocab", "max_len", "patch" and "classes" do not.
    width_axes = frozenset({"embed", "mlp", "head_dim"})

    @property
    def width(self) -> int:
        return self.d_model

    @property
    def width_multiplier(self) -> float:
        return self.d_model / self.base_width

    @property
    def readout_scale(self) -> float | None:
        """muP's factor on the readout's input (base_width / d_model); None under standard."""
        return self.base_width / self.d_model if self.parametrization == "mup" else None

    @property
    def attention_scale(self) -> float | None:
        """The factor on q.k: None (1/sqrt(Dh), the default) under standard; under muP
        sqrt(Dh0)/Dh with Dh0 = base_width/num_heads the head dim at base width, so logits
        stay O(1) when q and k become correlated in training (which 1/sqrt(Dh) does not)."""
        if self.parametrization == "standard":
            return None
        return (self.base_width / self.num_heads) ** 0.5 / self.head_dim

    def at_width(self, width: int):
        """This config at d_model=`width`: heads fixed (head dim scaled), an explicit d_ff
        scaled by the same factor, base_width unchanged."""
        d_ff = None if self.d_ff is None else max(1, round(self.d_ff * width / self.d_model))
        return dataclasses.replace(self, d_model=width, d_ff=d_ff)

    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def ff_width(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        return 8 * -(-self.d_model // 3)  # 8/3 * d_model rounded up to a multiple of 8

    def problems(self):
        out = layers.positive(self, "num_layers", "num_heads", "d_model", "max_len", "base_width",
                              "attention_block")
        out += [(n, f"must be positive or none, got {getattr(self, n)}")
                for n in ("num_kv_heads", "d_ff") if getattr(self, n) is not None and getattr(self, n) <= 0]
        if out:
            return out  # the divisibility checks below assume positive sizes
        if self.d_model % self.num_heads:
            out.append(("num_heads", f"must divide d_model={self.d_model}, got {self.num_heads}"))
        elif self.positional == "rope" and self.head_dim % 2:
            out.append(("positional", f"rope needs an even head dim, got d_model/num_heads={self.head_dim}"))
        if self.num_heads % self.kv_heads:
            out.append(("num_kv_heads", f"must divide num_heads={self.num_heads}, got {self.num_kv_heads}"))
        if not 0.0 <= self.dropout < 1.0:
            out.append(("dropout", f"must be in [0, 1), got {self.dropout}"))
        return out + self.precision_problems()


@dataclasses.dataclass(frozen=True)
class TransformerLMConfig(TransformerCore):
    """A decoder-only (GPT-style) next-token language model with causal self-attention."""

    kind = "transformer_lm"
    # None until the training loop fills it in from the tokenizer.
    vocab_size: int | None = None
    # Output logits = x @ token_embedding^T (Press & Wolf, 2017) instead of a separate
    # ("embed", "vocab") matrix.
    tie_embeddings: bool = True

    def problems(self):
        out = super().problems()
        if self.vocab_size is not None and self.vocab_size <= 0:
            out.append(("vocab_size", f"must be positive or none, got {self.vocab_size}"))
        return out


@dataclasses.dataclass(frozen=True)
class TransformerClassifierConfig(TransformerCore):
    """A bidirectional encoder over token ids, mean-pooled over the non-padding tokens."""

    kind = "transformer_classifier"
    # None until the training loop fills it in from the tokenizer.
    vocab_size: int | None = None
    num_classes: int = 2
    # Tokens equal to pad_id are padding: never attended to, never pooled. Pad on the right, so
    # that the real tokens keep positions 0..n-1.
    pad_id: int = 0

    def problems(self):
        out = super().problems() + layers.positive(self, "num_classes")
        if self.vocab_size is not None and self.vocab_size <= 0:
            out.append(("vocab_size", f"must be positive or none, got {self.vocab_size}"))
        if self.pad_id < 0:
            out.append(("pad_id", f"must be >= 0, got {self.pad_id}"))
        return out


@dataclasses.dataclass(frozen=True)
class ViTConfig(TransformerCore):
    """A Vision Transformer (Dosovitskiy et al., 2021) on NHWC images.

    patch_size must divide the image height and width; that is checked when the model is called,
    since the image size is not part of the config.
    """

    kind = "vit"
    num_classes: int = 10
    patch_size: int = 4
    # "cls": a learned token prepended to the patches, read out at the end; "mean": the average
    # of the patch outputs.
    pool: Literal["cls", "mean"] = "mean"

    def problems(self):
        return super().problems() + layers.positive(self, "num_classes", "patch_size")
