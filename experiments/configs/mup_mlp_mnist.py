"""A muP MLP on MNIST (three hidden layers of 512, base width 64), Adam at the rate tuned at width 64.

Under muP (model.parametrization=mup, training/mup.py) the learning rate found for the width-64
proxy is the one to use at width 512: experiments/scaling/mup_lr_transfer.py found 2^-7 best at
both widths (docs/mup.md). The coordinate check compares it with the standard parametrization.

  Command:  jaxmodels train experiments/configs/mup_mlp_mnist.py --workdir runs/mup_mlp_mnist
            jaxmodels coordcheck experiments/configs/mup_mlp_mnist.py --compare
  Runtime:  about 25 seconds on a 2-core CPU (2 epochs, batch 64); the coordinate check (widths
            64 to 1024, 5 steps, both parametrizations) about 40 seconds.
  Expected: test accuracy 97.95 % (seed 0); 97.42 % with model.parametrization=standard.
  Tiny:     --tiny trains width 64 for 40 steps.
"""

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import MLPConfig


def get_config(tiny: bool = False) -> Config:
    model = MLPConfig(num_classes=10, hidden=(512, 512, 512), parametrization="mup", base_width=64)
    data = DataConfig(dataset="mnist", batch_size=64)
    optimizer = OptimizerConfig(name="adam", learning_rate=2 ** -7, schedule="warmup_cosine",
                                warmup_steps=100)
    train = TrainConfig(seed=0, epochs=2, log_every=100)
    if tiny:
        model = MLPConfig(num_classes=10, hidden=(64, 64, 64), parametrization="mup", base_width=64)
        train = TrainConfig(seed=0, steps=40, log_every=10, eval_every=40, progress=False)
        optimizer = OptimizerConfig(name="adam", learning_rate=2 ** -7)
    return Config(name="mup_mlp_mnist" + ("_tiny" if tiny else ""), model=model, data=data,
                  optimizer=optimizer, train=train)
