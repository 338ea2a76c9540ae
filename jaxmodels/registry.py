"""The registries: models, datasets and objectives by name, filled by one public call each.

    import jaxmodels

    @dataclasses.dataclass(frozen=True)
    class MixerConfig:
        kind = "mixer"          # the name configs and config.json use
        num_classes: int = 10
        ...

    jaxmodels.register_model(MixerConfig, Mixer)          # Mixer(config) -> a Flax module
    jaxmodels.register_dataset("my_data", build_source)    # build_source(DataConfig) -> DataSource
    jaxmodels.register_objective("huber", huber)           # huber(**ObjectiveConfig fields) -> Objective

The package registers its own eight models, datasets and objectives with these same calls (see
the bottom of this file and `jaxmodels/models/__init__.py`); nothing reaches the loop by another
path. A registration may name its target lazily as "package.module:attribute", so that naming a
dataset costs no import until it is used.

This module imports nothing from jaxmodels, so every layer may register into it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import sys
from collections.abc import Callable
from typing import Any

from jaxmodels.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    kind: str
    config_class: type
    build: Any  # config -> a model (anything `jaxmodels.as_model` accepts), or "module:attr"
    origin: str  # where it was registered: a module name, or an experiment file's path


MODELS: dict[str, ModelEntry] = {}
DATASETS: dict[str, Any] = {}  # name -> build(DataConfig) -> DataSource, or "module:attr"
OBJECTIVES: dict[str, Any] = {}  # name -> factory(**options) -> Objective, or "module:attr"


def _origin(obj) -> str:
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    path = getattr(module, "__file__", None)
    # Experiment files are executed as modules named jaxmodels_<kind>_<stem> (config.run_file);
    # their path, not that generated name, is what lets a reader find the class again.
    if path and getattr(module, "__name__", "").startswith("jaxmodels_"):
        return path
    return getattr(obj, "__module__", "?")


def kind_of(config_class: type) -> str:
    kind = getattr(config_class, "kind", None)
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{config_class.__name__} has no `kind`: add a class attribute such as "
                          f"kind = {config_class.__name__.lower().removesuffix('config')!r} (the "
                          f"name configs and config.json use)")
    return kind


def register_model(config_class: type, build: Any) -> type:
    """Registers a model family: `config_class` is a frozen dataclass with a class attribute
    `kind`; `build(config)` returns the model (a `flax.linen.Module`, a `flax.nnx.Module`, an
    `(init, apply)` pair or a `jaxmodels.Model`). A Linen module class works as `build` directly
    when its one field is the config. Returns `config_class`, so it also works as a decorator
    helper. Registering the same kind again from the same place replaces the entry (an
    experiment file runs again on every load); from elsewhere it is an error."""
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise ConfigError(f"register_model: {config_class!r} is not a dataclass class: declare the "
                          f"model's hyper-parameters as @dataclasses.dataclass(frozen=True)")
    if not (callable(build) or isinstance(build, str)):
        raise ConfigError(f"register_model({config_class.__name__}, ...): the second argument must "
                          f"build the model from a config (e.g. the Flax module class), got {build!r}")
    kind = kind_of(config_class)
    origin = _origin(config_class)
    old = MODELS.get(kind)
    if old is not None and (old.origin, old.config_class.__qualname__) != (origin, config_class.__qualname__):
        raise ConfigError(f"model kind {kind!r} is already registered by {old.config_class.__qualname__} "
                          f"from {old.origin}: give {config_class.__qualname__} another kind")
    MODELS[kind] = ModelEntry(kind, config_class, build, origin)
    return config_class


def _register(table: dict, what: str, name: str, target: Any) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"register_{what}: the name must be an identifier-like string, got {name!r}")
    if not (callable(target) or isinstance(target, str)):
        raise ConfigError(f"register_{what}({name!r}, ...): expected a function, got {target!r}")
    table[name] = target


def register_dataset(name: str, build: Callable | str) -> None:
    """Registers `build(data_config) -> DataSource` under `name` (`data.dataset=name`)."""
    _register(DATASETS, "dataset", name, build)


def register_objective(name: str, factory: Callable | str) -> None:
    """Registers `factory(**options) -> Objective` under `name` (`objective.name=name`); the
    options are the `objective` config section's fields other than `name`."""
    _register(OBJECTIVES, "objective", name, factory)


def _resolve(target):
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


def _unknown(what: str, name: str, known) -> ConfigError:
    near = difflib.get_close_matches(name, list(known), n=1)
    hint = f"did you mean {near[0]!r}?" if near else f"registered: {', '.join(sorted(known))}"
    return ConfigError(f"unknown {what} {name!r}: {hint} (a {what} of your own is added with "
                       f"jaxmodels.register_{what.split()[0]}(...) in your experiment file)")


def model_entry(kind: str) -> ModelEntry:
    if kind not in MODELS:
        raise _unknown("model kind", kind, MODELS)
    return MODELS[kind]


def entry_for_config(config) -> ModelEntry:
    """The entry of a model config instance, checked to be the registered class itself."""
    kind = kind_of(type(config))
    entry = model_entry(kind)
    if type(config).__qualname__ != entry.config_class.__qualname__:
        raise ConfigError(f"model config {type(config).__qualname__} has kind {kind!r}, which is "
                          f"registered for {entry.config_class.__qualname__}")
    return entry


def build_model(config):
    """The model for a registered model config (what its `build` returns)."""
    return _resolve(entry_for_config(config).build)(config)


def dataset(name: str):
    if name not in DATASETS:
        raise _unknown("dataset", name, DATASETS)
    return _resolve(DATASETS[name])


def objective_factory(name: str):
    if name not in OBJECTIVES:
        raise _unknown("objective", name, OBJECTIVES)
    return _resolve(OBJECTIVES[name])


# ---------------------------------------------------------------------------------------------
# The package's own datasets and objectives, registered with the calls a user makes (lazily,
# so that naming them imports nothing). Its models register in jaxmodels/models/__init__.py.

for _name in ("mnist", "fashion_mnist", "digits"):
    register_dataset(_name, "jaxmodels.data.builtin:image_source")
register_dataset("image_folder", "jaxmodels.data.image_folder:build")
for _name in ("shakespeare", "wikipedia", "text", "tiny_shakespeare", "wikitext2", "enwik8"):
    register_dataset(_name, "jaxmodels.data.builtin:text_source")
register_dataset("tokens", "jaxmodels.data.builtin:tokens_source")
register_objective("cross_entropy", "jaxmodels.training.objectives:cross_entropy")
register_objective("mse", "jaxmodels.training.objectives:mse")
# Placeholders that config.json names when `jaxmodels.fit` was handed the data or the loss in
# Python: reading such a config back works, building from it asks for the object again.
register_dataset("given", "jaxmodels.api:given_in_python")
register_objective("given", "jaxmodels.api:given_in_python")
