"""A character-level LSTM language model on the complete works of Shakespeare.

One LSTM layer of 256 units, character embeddings of 64, context 64, batch 32, 2,000 steps,
Adam (lr 2e-3, 100 warmup steps, cosine decay to 2e-4), gradient clipping at 1.

  Command:  jaxmodels train experiments/configs/lstm_shakespeare.py --workdir runs/lstm_shakespeare
            jaxmodels sample --workdir runs/lstm_shakespeare --prompt "ROMEO:" --max-new-tokens 300
  Runtime:  about 4.5 minutes on a 2-core CPU.
  Expected: validation loss <= 1.72 nats/character; measured 1.696 (seed 0).
  Tiny:     --tiny trains 30 steps of a 32-unit LSTM.
"""

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import RNNLMConfig


def get_config(tiny: bool = False) -> Config:
    model = RNNLMConfig(cell="lstm", hidden=256, num_layers=1, embed_dim=64)
    data = DataConfig(dataset="shakespeare", tokenizer="char", seq_len=64, batch_size=32,
                      eval_batch_size=128, eval_split="validation", eval_windows=256)
    optimizer = OptimizerConfig(name="adam", learning_rate=2e-3, schedule="warmup_cosine",
                                warmup_steps=100, final_lr_fraction=0.1, grad_clip_norm=1.0)
    train = TrainConfig(seed=0, steps=2000, log_every=50, eval_every=250)
    if tiny:
        model = RNNLMConfig(cell="lstm", hidden=32, num_layers=1, embed_dim=16)
        optimizer = OptimizerConfig(name="adam", learning_rate=1e-2)
        data = DataConfig(dataset="shakespeare", tokenizer="char", seq_len=32, batch_size=8,
                          eval_batch_size=64, eval_split="validation", eval_windows=16)
        train = TrainConfig(seed=0, steps=30, log_every=10, eval_every=30, progress=False)
    return Config(name="lstm_shakespeare" + ("_tiny" if tiny else ""), model=model, data=data,
                  optimizer=optimizer, train=train)
