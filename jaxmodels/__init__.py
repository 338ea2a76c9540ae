"""jaxmodels: pure Flax Linen models, one pure train step, sharding as data.

    import jaxmodels
    config = jaxmodels.load_config("experiments/configs/seed_cnn_mnist.py")
    summary = jaxmodels.train(config, "runs/seed_cnn")

Importing this package changes no global JAX setting and touches no file or network.
"""

from jaxmodels.config import Config, DataConfig, ObjectiveConfig, OptimizerConfig, TrainConfig, apply_overrides
from jaxmodels.config import load as load_config
from jaxmodels.data.arrays import from_arrays
from jaxmodels.data.generator import from_generator
from jaxmodels.data.grain_source import from_grain
from jaxmodels.data.source import BatchStream, DataSource
from jaxmodels.errors import ConfigError, DataError, RunStopped, UserError
from jaxmodels.models.interface import Model, as_model
from jaxmodels.registry import register_dataset, register_model, register_objective
from jaxmodels.training import objectives
from jaxmodels.training.objectives import Objective
from jaxmodels.training.state import TrainState
from jaxmodels.training.step import make_eval_step, make_train_step

__version__ = "0.1.0"


def train(config: Config, workdir, *, restart: bool = False, parts=None, hooks=()) -> dict:
    """Trains `config`, writing results into `workdir` and resuming from its newest checkpoint
    unless `restart`; returns the summary (see training/loop.py). `parts` (a `loop.Parts`)
    hands over a model, data source, objective or optimizer in Python; `hooks` are called at
    log, eval and checkpoint points (training/hooks.py)."""
    from jaxmodels.training import loop

    return loop.train(config, workdir, restart=restart, parts=parts, hooks=hooks)


def fit(model, data, **kwargs) -> dict:
    """Keras-style training of any model on arrays or a data source (see jaxmodels/api.py)."""
    from jaxmodels import api

    return api.fit(model, data, **kwargs)


def predict(source, inputs, **kwargs):
    """The model's outputs for `inputs` from a workdir or a TrainState (see jaxmodels/api.py)."""
    from jaxmodels import api

    return api.predict(source, inputs, **kwargs)


def evaluate(config: Config, workdir, split: str | None = None) -> dict:
    """Evaluates the weights saved by a training run in `workdir`."""
    from jaxmodels.training import loop

    return loop.evaluate(config, workdir, split=split)


__all__ = ["Config", "DataConfig", "ObjectiveConfig", "OptimizerConfig", "TrainConfig",
           "apply_overrides", "load_config", "train", "evaluate", "ConfigError", "DataError",
           "RunStopped", "UserError", "Model", "as_model", "register_model", "register_dataset",
           "register_objective", "objectives", "Objective", "TrainState", "make_train_step",
           "make_eval_step", "fit", "predict", "from_arrays", "from_generator", "from_grain",
           "DataSource", "BatchStream"]
