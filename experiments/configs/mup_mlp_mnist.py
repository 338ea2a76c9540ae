"""A muP MLP on MNIST (three hidden layers of 512, base width 64), Adam at the rate tuned at width 64.

Under muP (model.parametrization=mup, training/mup.py) the learning rate found for the width-64
proxy is the one to use at width 512: the experiment experiments/scaling/mup_lr_transfer.py
measures that. The coordinate check of this config compares it with the standard
parametrization in seconds.

  Command:  jaxmodels train experiments/configs/mup_mlp_mnist.py --workdir runs/mup_mlp_mnist
            jaxmodels coordcheck experiments/configs/mup_mlp_mnist.py --compare
  Runtime:  about 1 minute on a 2-core CPU (2 epochs, batch 64); the coordinate check about
            20 seconds.
  Expected: test accuracy about 98 %.
  Tiny:     --tiny trains width 64 for 40 steps.
"""

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import MLPConfig


def get_config(tiny: bool = False) -> Config:
    model = MLPConfig(num_classes=10, hidden=(512, 512, 512), parametrization="mup", base_width=64)
    data = DataConfig(dataset="mnist", batch_size=64)
    optimizer = OptimizerConfig(name="adam", learning_rate=3e-3, schedule="warmup_cosine",
                                warmup_steps=100)
    train = TrainConfig(seed=0, epochs=2, log_every=100)
    if tiny:
        model = MLPConfig(num_classes=10, hidden=(64, 64, 64), parametrization="mup", base_width=64)
        train = TrainConfig(seed=0, steps=40, log_every=10, eval_every=40, progress=False)
        optimizer = OptimizerConfig(name="adam", learning_rate=3e-3)
    return Config(name="mup_mlp_mnist" + ("_tiny" if tiny else ""), model=model, data=data,
                  optimizer=optimizer, train=train)
