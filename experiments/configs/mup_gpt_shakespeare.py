"""A muP GPT on Shakespeare, character level: 2 layers x 256 (4 heads), base width 64.

The architecture of gpt_shakespeare.py (RoPE, pre-LayerNorm, GELU MLP) with a separate
(zero-initialised) readout instead of tied embeddings, under the maximal update
parametrization: AdamW at the learning rate one would tune at d_model=64 (4 heads of 16), with
hidden matrices at 64/256 of it (training/mup.py). Its coordinate check is the quick way to see
muP hold for a Transformer.

  Command:  jaxmodels coordcheck experiments/configs/mup_gpt_shakespeare.py --compare --widths 64,128,256,512 --steps 4
            jaxmodels train experiments/configs/mup_gpt_shakespeare.py --workdir runs/mup_gpt_shakespeare
  Runtime:  the coordinate check about 2 minutes on a 2-core CPU; training not measured yet.
  Expected: coordinate check: every layer's log-RMS slope against log width within +-0.14 under
            muP, up to 0.97 under standard after 4 steps (docs/mup.md). Training: no result yet.
  Tiny:     --tiny is one layer of width 64 for 30 steps, and a seconds-long coordinate check.
"""

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import TransformerLMConfig


def get_config(tiny: bool = False) -> Config:
    model = TransformerLMConfig(num_layers=2, num_heads=4, d_model=256, max_len=64,
                                positional="rope", norm="layernorm", mlp="gelu",
                                tie_embeddings=False, parametrization="mup", base_width=64)
    data = DataConfig(dataset="shakespeare", tokenizer="char", seq_len=64, batch_size=12,
                      eval_batch_size=128, eval_split="validation", eval_windows=256)
    optimizer = OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="warmup_cosine",
                                warmup_steps=100, final_lr_fraction=0.1, b2=0.99,
                                weight_decay=0.1, grad_clip_norm=1.0)
    train = TrainConfig(seed=0, steps=1000, log_every=50, eval_every=250)
    if tiny:
        model = TransformerLMConfig(num_layers=1, num_heads=4, d_model=64, max_len=32,
                                    positional="rope", tie_embeddings=False,
                                    parametrization="mup", base_width=64)
        data = DataConfig(dataset="shakespeare", tokenizer="char", seq_len=16, batch_size=8,
                          eval_batch_size=64, eval_split="validation", eval_windows=16)
        optimizer = OptimizerConfig(name="adamw", learning_rate=3e-3, weight_decay=0.1)
        train = TrainConfig(seed=0, steps=30, log_every=10, eval_every=30, progress=False)
    return Config(name="mup_gpt_shakespeare" + ("_tiny" if tiny else ""), model=model, data=data,
                  optimizer=optimizer, train=train)
