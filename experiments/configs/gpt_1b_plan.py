"""A ~1.2B-parameter decoder LM for memory planning (not for training on CPU).

24 layers, width 2048, 16 heads, MLP 8192, context 2048, a 32,000-token vocabulary, global
batch 64 sequences, AdamW. Its purpose is `jaxmodels plan`: what fits on which devices.

  Command:  XLA_FLAGS=--xla_force_host_platform_device_count=8 jaxmodels plan \\
              experiments/configs/gpt_1b_plan.py parallel.preset=fsdp --device-memory 16GiB
  Runtime:  about a minute (the compile for XLA's analysis dominates); add --no-compile for the
            analytic estimate in seconds.
  Expected: see the README's Parallelism section for the numbers on 8 x 16 GiB and 8 x 80 GiB.
  Tiny:     --tiny is a 2-layer width-64 model of the same shape family (tests use it).
"""

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import TransformerLMConfig


def get_config(tiny: bool = False) -> Config:
    model = TransformerLMConfig(num_layers=24, num_heads=16, d_model=2048, d_ff=8192,
                                max_len=2048, vocab_size=32000, positional="rope",
                                scan_layers=True, dtype="bfloat16")
    data = DataConfig(dataset="shakespeare", tokenizer="char", seq_len=2048, batch_size=64,
                      eval_batch_size=64, eval_split="validation")
    if tiny:
        model = TransformerLMConfig(num_layers=2, num_heads=2, d_model=64, max_len=128,
                                    vocab_size=512, positional="rope", scan_layers=True)
        data = DataConfig(dataset="shakespeare", tokenizer="char", seq_len=128, batch_size=16,
                          eval_batch_size=16, eval_split="validation")
    return Config(name="gpt_1b_plan" + ("_tiny" if tiny else ""), model=model, data=data,
                  optimizer=OptimizerConfig(name="adamw", learning_rate=3e-4, weight_decay=0.1),
                  train=TrainConfig(steps=1000))
