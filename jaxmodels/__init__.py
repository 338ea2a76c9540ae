"""jaxmodels: pure Flax Linen models, one pure train step, sharding as data.

    import jaxmodels
    config = jaxmodels.load_config("experiments/configs/seed_cnn_mnist.py")
    summary = jaxmodels.train(config, "runs/seed_cnn")

Importing this package changes no global JAX setting and touches no file or network.
"""

from jaxmodels.config import (CheckpointConfig, Config, DataConfig, ObjectiveConfig, OptimizerConfig,
                              ParallelConfig, TrainConfig, apply_overrides)
from jaxmodels.config import load as load_config
from jaxmodels.errors import ConfigError, DataError, RunStopped, UserError
from jaxmodels.registry import register_dataset, register_model, register_objective

# The rest of the public API is imported on first use (PEP 562), so `import jaxmodels` and the
# CLI's argument and config errors do not wait for orbax, grain and matplotlib to load.
_LAZY = {
    "Model": "jaxmodels.models.interface", "as_model": "jaxmodels.models.interface",
    "objectives": None, "Objective": "jaxmodels.training.objectives",
    "hooks": None, "Hook": "jaxmodels.training.hooks", "Stop": "jaxmodels.training.hooks",
    "EarlyStopping": "jaxmodels.training.hooks", "CSVLogger": "jaxmodels.training.hooks",
    "SavePredictions": "jaxmodels.training.hooks",
    "TrainState": "jaxmodels.training.state",
    "make_train_step": "jaxmodels.training.step", "make_eval_step": "jaxmodels.training.step",
    "Parts": "jaxmodels.training.loop",
    "DataSource": "jaxmodels.data.source", "BatchStream": "jaxmodels.data.source",
    "from_arrays": "jaxmodels.data.arrays", "from_generator": "jaxmodels.data.generator",
    "from_grain": "jaxmodels.data.grain_source",
    "plot_curves": "jaxmodels.training.plots",
}


def __getattr__(name: str):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'jaxmodels' has no attribute {name!r}")
    if _LAZY[name] is None:  # a submodule exposed at the top: jaxmodels.objectives, .hooks
        value = importlib.import_module(f"jaxmodels.training.{name}")
    else:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


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


def sample(workdir, prompt: str, *, max_new_tokens: int = 200, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> str:
    """`prompt` and its continuation by the language model trained in `workdir` (what
    `jaxmodels sample` prints). Temperature 0 is greedy; top_k 0 and top_p 1 filter nothing."""
    from jaxmodels import generate

    return generate.generate_text(workdir, prompt, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)


def plan(config: Config, *, compile_step: bool = True):
    """Per-device memory of one training step of `config` on the visible devices, and where
    each parameter goes (`jaxmodels plan`; see training/plan.py). Nothing is allocated:
    `.describe()` is the table, `.param_specs` maps each parameter to (shape, PartitionSpec),
    `.total` is the bytes to compare with a device's memory."""
    from jaxmodels.training import plan as plan_lib

    return plan_lib.plan(config, compile_step=compile_step)


def evaluate(config: Config, workdir, split: str | None = None) -> dict:
    """Evaluates the weights saved by a training run in `workdir`."""
    from jaxmodels.training import loop

    return loop.evaluate(config, workdir, split=split)


__all__ = ["Config", "DataConfig", "ObjectiveConfig", "OptimizerConfig", "TrainConfig",
           "ParallelConfig", "CheckpointConfig",
           "apply_overrides", "load_config", "train", "evaluate", "ConfigError", "DataError",
           "RunStopped", "UserError", "Model", "as_model", "register_model", "register_dataset",
           "register_objective", "objectives", "Objective", "TrainState", "make_train_step",
           "make_eval_step", "fit", "predict", "from_arrays", "from_generator", "from_grain",
           "DataSource", "BatchStream", "hooks", "Hook", "Stop", "EarlyStopping", "CSVLogger",
           "SavePredictions", "Parts", "plot_curves", "sample", "plan"]
