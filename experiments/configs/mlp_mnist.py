"""A two-hidden-layer MLP (256-256, ReLU) on MNIST with Adam and warmup + cosine decay.

  Command:  jaxmodels train experiments/configs/mlp_mnist.py --workdir runs/mlp_mnist
  Runtime:  about 1 minute on a 2-core CPU (5 epochs, batch 64).
  Expected: test accuracy about 98 %.
  Tiny:     --tiny trains 40 steps.
"""

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import MLPConfig


def get_config(tiny: bool = False) -> Config:
    config = Config(
        name="mlp_mnist",
        model=MLPConfig(num_classes=10, hidden=(256, 256), dropout=0.1),
        data=DataConfig(dataset="mnist", batch_size=64),
        optimizer=OptimizerConfig(name="adam", learning_rate=1e-3, schedule="warmup_cosine",
                                  warmup_steps=200),
        train=TrainConfig(seed=0, epochs=5, log_every=100),
    )
    if tiny:
        config = Config(name="mlp_mnist_tiny", model=MLPConfig(hidden=(32,)), data=config.data,
                        optimizer=OptimizerConfig(name="adam", learning_rate=3e-3),
                        train=TrainConfig(steps=40, log_every=10, eval_every=40, progress=False))
    return config
