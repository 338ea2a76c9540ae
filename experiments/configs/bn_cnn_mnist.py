"""A stronger CNN on MNIST: two blocks of [conv 3x3 - BatchNorm - ReLU] x 2 + max-pool (32 then
64 filters), dense 128, dropout 0.25, dense 10. AdamW with warmup and cosine decay.

BatchNorm's running statistics flow through the pure train step as the "batch_stats"
collection (updated in training, frozen in evaluation).

  Command:  jaxmodels train experiments/configs/bn_cnn_mnist.py --workdir runs/bn_cnn_mnist
  Runtime:  about 8 minutes on a 2-core CPU alone, 12 with other work beside it (3 epochs, batch 128).
  Expected: test accuracy >= 99.3 % (measured 99.37 %).
  Tiny:     --tiny trains 30 steps of batch 32.
"""

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import BatchNormCNNConfig


def get_config(tiny: bool = False) -> Config:
    model = BatchNormCNNConfig(num_classes=10, block_filters=(32, 64), convs_per_block=2,
                               hidden=128, dropout=0.25)
    if tiny:
        return Config(
            name="bn_cnn_mnist_tiny",
            model=BatchNormCNNConfig(num_classes=10, block_filters=(8, 16), hidden=32),
            data=DataConfig(dataset="mnist", batch_size=32),
            optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, weight_decay=1e-4),
            train=TrainConfig(steps=30, log_every=10, eval_every=30, progress=False),
        )
    return Config(
        name="bn_cnn_mnist",
        model=model,
        data=DataConfig(dataset="mnist", batch_size=128, normalization="standardize"),
        optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3, schedule="warmup_cosine",
                                  warmup_steps=200, weight_decay=1e-4),
        train=TrainConfig(seed=0, epochs=3, log_every=50),
    )
