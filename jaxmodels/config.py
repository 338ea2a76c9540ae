"""Typed, frozen experiment configuration.

A `Config` is four sections, each a frozen dataclass whose fields are declared once, with their
defaults, here (model hyper-parameters live beside their model in `jaxmodels.models`). The
defaults are the framework's "hello world": the classic CNN on MNIST for 10 epochs.

Experiment files (`experiments/configs/*.py`) define `get_config(tiny: bool = False) -> Config`.
Command-line overrides are dotted `KEY=VALUE` pairs (`train.epochs=1`) parsed against the field's
declared type; unknown keys, wrong types and impossible values are one-line `ConfigError`s that
name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import pathlib
import re
import sys
import types
import typing
from typing import Any, Literal

from jaxmodels import models, registry
from jaxmodels.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # A registered dataset (`jaxmodels list` shows them). Built in: images mnist, fashion_mnist,
    # digits; text (language modelling) shakespeare, wikipedia, text (a local file or folder
    # given as data_dir), and, with download=true, tiny_shakespeare, wikitext2, enwik8. An
    # experiment file adds its own with jaxmodels.register_dataset(name, build).
    dataset: str = "mnist"
    # Examples per step: images, or windows of seq_len tokens for text.
    batch_size: int = 32
    # Evaluation batches are padded and masked, so this never drops an example.
    eval_batch_size: int = 500
    # "standardize": (x/255 - mean)/std with the train split's statistics; "unit": x/255.
    normalization: Literal["standardize", "unit"] = "standardize"
    # The held-out split reported as eval_* at the end of training. Validation is used during it.
    eval_split: Literal["validation", "test"] = "test"
    data_dir: str | None = None
    # Allow fetching from the dataset's canonical URL when it is not installed locally.
    download: bool = False
    # A base URL that replaces the canonical download host (a local mirror; tests use 127.0.0.1).
    mirror: str | None = None
    # Text only: window length in tokens, tokenizer, BPE vocabulary size, and how many windows of
    # the validation split periodic validation reads (the final evaluation reads them all).
    seq_len: int = 64
    # "char", "byte" or "bpe" (trained on the train split), or the path of a folder whose
    # tokenizer.json is used as it is: a Hugging Face checkpoint's, or a jaxmodels workdir's (an
    # imported checkpoint's, `jaxmodels import-hf`), so the data match the model's vocabulary.
    tokenizer: str = "char"
    vocab_size: int = 1024
    eval_windows: int | None = 256
    # Text only: windows the final evaluation reads, spread evenly over the split (None: all of
    # it); summary.json's eval_fraction says how much of the split that was.
    final_eval_windows: int | None = None
    # Input pipeline (data/prefetch.py, data/image_folder.py): train batches read and placed this
    # many steps ahead in a background thread (0: in the loop); grain worker processes that decode
    # and augment streamed images (0: in-process); augmentations of train images, a comma list of
    # "crop:P" (pad P pixels each side, random crop back) and "flip" (random horizontal flip).
    prefetch: int = 2
    workers: int = 0
    augment: str = ""

    def problems(self):
        out = [(n, f"must be positive, got {getattr(self, n)}")
               for n in ("batch_size", "eval_batch_size", "seq_len", "vocab_size")
               if getattr(self, n) <= 0]
        out += [(n, f"must be >= 0, got {getattr(self, n)}") for n in ("prefetch", "workers")
                if getattr(self, n) < 0]
        if self.eval_windows is not None and self.eval_windows <= 0:
            out.append(("eval_windows", f"must be positive or none, got {self.eval_windows}"))
        if self.final_eval_windows is not None and self.final_eval_windows <= 0:
            out.append(("final_eval_windows", f"must be positive or none, got {self.final_eval_windows}"))
        if self.dataset not in registry.DATASETS:
            near = difflib.get_close_matches(self.dataset, list(registry.DATASETS), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"registered: {', '.join(sorted(registry.DATASETS))}"
            out.append(("dataset", f"={self.dataset!r} is not a registered dataset: {hint}"))
        if self.dataset == "text" and self.data_dir is None:
            out.append(("data_dir", "must name a text file or folder when data.dataset=text"))
        if self.dataset == "tokens" and self.data_dir is None:
            out.append(("data_dir", "must name a token store (jaxmodels prepare) when data.dataset=tokens"))
        return out


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """What the model is trained to minimise (jaxmodels/training/objectives.py)."""

    # A registered objective: cross_entropy (integer class or token targets) or mse (float
    # regression targets), or one an experiment file adds with jaxmodels.register_objective.
    name: str = "cross_entropy"
    # cross_entropy only: smoothing epsilon, and PaLM's z-loss weight (1e-4 is usual for LMs).
    label_smoothing: float = 0.0
    z_loss: float = 0.0

    def problems(self):
        out = []
        if self.name not in registry.OBJECTIVES:
            near = difflib.get_close_matches(self.name, list(registry.OBJECTIVES), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"registered: {', '.join(sorted(registry.OBJECTIVES))}"
            out.append(("name", f"={self.name!r} is not a registered objective: {hint}"))
        if not 0.0 <= self.label_smoothing < 1.0:
            out.append(("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}"))
        if not self.z_loss >= 0.0:
            out.append(("z_loss", f"must be >= 0, got {self.z_loss}"))
        if self.name != "cross_entropy" and (self.label_smoothing or self.z_loss):
            out.append(("label_smoothing/z_loss", f"apply to objective.name=cross_entropy only, "
                                                  f"not {self.name}"))
        return out


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["sgd", "adam", "adamw", "lion", "adafactor"] = "adam"
    learning_rate: float = 1e-3
    schedule: Literal["constant", "warmup_cosine", "warmup_linear"] = "constant"
    warmup_steps: int = 0
    # Decaying schedules end at learning_rate * final_lr_fraction.
    final_lr_fraction: float = 0.0
    # sgd only.
    momentum: float = 0.0
    nesterov: bool = False
    # adam, adamw, lion (lion's usual b2 is 0.99: set it explicitly).
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    # adamw, lion, adafactor. adamw skips biases and normalisation scales (parameters of rank 1).
    weight_decay: float = 0.0
    # Global-norm clipping of the (accumulated) gradient; None disables it.
    grad_clip_norm: float | None = None

    def problems(self):
        out = []
        if not self.learning_rate > 0:
            out.append(("learning_rate", f"must be positive, got {self.learning_rate}"))
        if self.warmup_steps < 0:
            out.append(("warmup_steps", f"must be >= 0, got {self.warmup_steps}"))
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            out.append(("final_lr_fraction", f"must be in [0, 1], got {self.final_lr_fraction}"))
        for n in ("momentum", "b1", "b2"):
            if not 0.0 <= getattr(self, n) < 1.0:
                out.append((n, f"must be in [0, 1), got {getattr(self, n)}"))
        if self.nesterov and self.name == "sgd" and self.momentum == 0.0:
            out.append(("nesterov", "needs optimizer.momentum > 0 (e.g. optimizer.momentum=0.9)"))
        if self.eps <= 0:
            out.append(("eps", f"must be positive, got {self.eps}"))
        if self.weight_decay < 0:
            out.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if self.weight_decay > 0 and self.name in ("sgd", "adam"):
            out.append(("weight_decay", f"is ignored by {self.name}: use optimizer.name=adamw"))
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            out.append(("grad_clip_norm", f"must be positive or none, got {self.grad_clip_norm}"))
        return out


def profile_range(text: str) -> tuple[int, int]:
    """(START, END) of train.profile_steps="START:END"; ValueError saying what is wrong."""
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError("not START:END: pass two step numbers, e.g. train.profile_steps=5:8")
    start, end = int(m[1]), int(m[2])
    if start < 1 or end < start:
        raise ValueError("START must be at least 1 and END at least START, e.g. "
                         "train.profile_steps=5:8")
    return start, end


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # Seeds everything: parameter init, dropout, and the data order.
    seed: int = 0
    # The training length: `steps` wins when both are given.
    steps: int | None = None
    epochs: float | None = 10.0
    # Gradient accumulation: each batch is split into this many micro-batches.
    microbatches: int = 1
    log_every: int = 100
    # Validation every this many steps; None: at the end of every epoch.
    eval_every: int | None = None
    progress: bool = True
    # A non-finite loss or gradient norm: "stop" ends the run with the last good checkpoint kept;
    # "skip" drops that update (the state stays as it was; the data moves on) and counts it.
    nonfinite: Literal["stop", "skip"] = "stop"
    # Spike guard (off when None): skip an update whose loss exceeds the running mean of recent
    # accepted losses by this many standard deviations; the running statistics are exponential
    # averages over about `spike_window` steps and the guard acts once that many were accepted.
    spike_sigma: float | None = None
    spike_window: int = 100
    # TensorBoard event files in WORKDIR/tensorboard (training/tensorboard.py).
    tensorboard: bool = True
    # "START:END": a jax.profiler trace of those steps into WORKDIR/profile (training/profile.py);
    # profile_perfetto also writes jax's perfetto_trace.json.gz (ui.perfetto.dev).
    profile_steps: str | None = None
    profile_perfetto: bool = False

    def problems(self):
        out = []
        if self.steps is None and self.epochs is None:
            out.append(("steps", "set train.steps or train.epochs"))
        if self.steps is not None and self.steps <= 0:
            out.append(("steps", f"must be positive, got {self.steps}"))
        if self.epochs is not None and not self.epochs > 0:
            out.append(("epochs", f"must be positive, got {self.epochs}"))
        for n in ("microbatches", "log_every"):
            if getattr(self, n) <= 0:
                out.append((n, f"must be positive, got {getattr(self, n)}"))
        if self.eval_every is not None and self.eval_every <= 0:
            out.append(("eval_every", f"must be positive or none, got {self.eval_every}"))
        if self.spike_sigma is not None and not self.spike_sigma > 0:
            out.append(("spike_sigma", f"must be positive or none, got {self.spike_sigma}"))
        if self.spike_window < 2:
            out.append(("spike_window", f"must be at least 2, got {self.spike_window}"))
        if self.profile_steps is not None:
            try:
                profile_range(self.profile_steps)
            except ValueError as e:
                out.append(("profile_steps", f"={self.profile_steps!r}: {e}"))
        return out


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Periodic saves of the whole run (train state, data position, loop counters, config) under
    WORKDIR/checkpoints; a run launched into a workdir that holds one continues from it."""

    # Save every this many steps (None: only at the end and when stopped by a signal).
    every_steps: int | None = 1000
    # Retention: the newest `keep`, plus every step that is a multiple of `keep_every`, plus the
    # best by `keep_best` (among steps where validation ran). Everything else is deleted.
    keep: int = 3
    keep_every: int | None = None
    keep_best: Literal["val_loss", "val_accuracy"] | None = None
    # Write in a background thread while training continues (the arrays are copied first).
    async_save: bool = True

    def problems(self):
        out = []
        if self.every_steps is not None and self.every_steps <= 0:
            out.append(("every_steps", f"must be positive or none, got {self.every_steps}"))
        if self.keep < 1:
            out.append(("keep", f"must be at least 1 (the newest checkpoint), got {self.keep}"))
        if self.keep_every is not None and self.keep_every <= 0:
            out.append(("keep_every", f"must be positive or none, got {self.keep_every}"))
        return out


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """How a run spreads over devices: a preset (the rules table mapping logical parameter axes to
    mesh axes, see `jaxmodels.parallel.rules`) and the ("data", "fsdp", "tensor") mesh shape.

    Mesh sizes left at None take the preset's default: data puts every device on "data", fsdp on
    "fsdp", tensor on "tensor", fsdp_tensor 2 on "tensor" and the rest on "fsdp". An explicit size
    replaces the default; -1 means "the devices the other axes leave", and when no axis is -1 and
    parallel.data was not set, "data" takes the remainder (so `parallel.tensor=2` alone means
    data-parallel replicas of 2-way tensor-parallel models).
    """

    preset: Literal["data", "fsdp", "tensor", "fsdp_tensor"] = "data"
    # How many of the visible devices the mesh uses (None: all of them; 1: one device, the
    # reference a sharded run is compared with).
    devices: int | None = None
    data: int | None = None
    fsdp: int | None = None
    tensor: int | None = None
    # Under a preset that shards parameters, a parameter at least this large (bytes) left fully
    # replicated is reported (a warning; a ConfigError with strict=true).
    replication_threshold_bytes: int = 1 << 20
    strict: bool = False

    def problems(self):
        out = []
        if self.devices is not None and self.devices <= 0:
            out.append(("devices", f"must be positive or none, got {self.devices}"))
        sizes = {n: getattr(self, n) for n in ("data", "fsdp", "tensor")}
        for n, v in sizes.items():
            if v is not None and v != -1 and v <= 0:
                out.append((n, f"must be positive, -1 (the remaining devices) or none, got {v}"))
        if sum(v == -1 for v in sizes.values()) > 1:
            out.append(("data/fsdp/tensor", "may hold -1 (the remaining devices) only once"))
        if self.preset in ("data", "fsdp") and self.tensor not in (None, 1):
            out.append(("tensor", f"={self.tensor} is unused by parallel.preset={self.preset}: "
                                  f"use parallel.preset=tensor or fsdp_tensor"))
        if self.preset in ("data", "tensor") and self.fsdp not in (None, 1):
            # The data preset replicates parameters: an fsdp axis there would only split batches,
            # which parallel.data already does.
            out.append(("fsdp", f"={self.fsdp} is unused by parallel.preset={self.preset}: "
                                f"use parallel.preset=fsdp or fsdp_tensor"))
        if self.replication_threshold_bytes < 0:
            out.append(("replication_threshold_bytes",
                        f"must be >= 0, got {self.replication_threshold_bytes}"))
        return out


@dataclasses.dataclass(frozen=True)
class Config:
    # Any registered model config (jaxmodels.register_model): the eight built-in families or a
    # researcher's own dataclass declared in their experiment file.
    model: Any = models.SeedCNNConfig()
    data: DataConfig = DataConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    # The classic CNN's recipe: Adam at 1e-3, annealed (see experiments/configs/seed_cnn_mnist.py).
    optimizer: OptimizerConfig = OptimizerConfig(schedule="warmup_cosine", warmup_steps=500)
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    # Shown in logs and summaries; experiment files set it to their file name.
    name: str = "default"
    # The experiment file this config came from and the sha256 of its text, filled in by
    # `load` so config.json and the results table record the researcher's own code; reading
    # config.json back runs that file again when it declares the model.
    experiment_file: str | None = None
    experiment_sha256: str | None = None

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.model) or isinstance(self.model, type):
            raise ConfigError(f"model={self.model!r} is not a model config: pass a registered model "
                              f"config dataclass (see jaxmodels.register_model), or use jaxmodels.fit "
                              f"to train a module directly")
        registry.entry_for_config(self.model)
        for section in ("model", "data", "objective", "optimizer", "train", "parallel", "checkpoint"):
            problems = getattr(getattr(self, section), "problems", None)
            for key, message in (problems() if problems else ()):
                sep = "" if message.startswith("=") else " "
                raise ConfigError(f"{section}.{key}{sep}{message}")
        if self.data.batch_size % self.train.microbatches:
            raise ConfigError(
                f"data.batch_size={self.data.batch_size} is not divisible by "
                f"train.microbatches={self.train.microbatches}: pick a divisor of the batch size"
            )


def default_config(tiny: bool = False) -> Config:
    """The embedded default `jaxmodels train` runs without a file (so an installed wheel, with no
    experiments/ folder, has one): the classic CNN on MNIST for 10 epochs, or 60 steps with
    `tiny`. experiments/configs/seed_cnn_mnist.py is this same config, with its docstring."""
    if not tiny:
        return Config(name="seed_cnn_mnist")
    return Config(name="seed_cnn_mnist_tiny", optimizer=OptimizerConfig(name="adam", learning_rate=1e-3),
                  train=TrainConfig(seed=0, steps=60, log_every=20, eval_every=60, progress=False))


# ---------------------------------------------------------------------------------------------
# Overrides: KEY=VALUE strings parsed against declared types.

_NONE = {"none", "null"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse(text: str, tp: Any, key: str) -> Any:
    """Parses `text` as a value of type `tp`, or raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse(text, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={text!r}: {'; '.join(errors)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if text in choices:
            return text
        raise ConfigError(f"{key}={text!r} is not one of {', '.join(map(str, choices))}")
    if origin is tuple:
        (elem, *rest) = typing.get_args(tp)
        body = text.strip().strip("()[]")
        parts = [p for p in (s.strip() for s in body.split(",")) if p]
        return tuple(_parse(p, elem, key) for p in parts)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{key}={text!r}: expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            try:
                as_float = float(text)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ConfigError(f"{key}={text!r}: expected an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r}: expected a number") from None
    if tp is str:
        return text
    raise ConfigError(f"{key}: overriding a field of type {tp} from the command line is not supported")


def _field_types(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _set(obj, path: list[str], text: str, full_key: str):
    types_ = _field_types(obj)
    head = path[0]
    if head not in types_:
        prefix = full_key[: len(full_key) - len(".".join(path))]
        near = difflib.get_close_matches(head, list(types_), n=1)
        hint = f": did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(prefix + k for k in types_)}"
        raise ConfigError(f"unknown config key '{full_key}'{hint}")
    current = getattr(obj, head)
    if len(path) == 1:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"'{full_key}' is a section, not a value: set one of its keys, e.g. '{full_key}.{dataclasses.fields(current)[0].name}=...'")
        return dataclasses.replace(obj, **{head: _parse(text, types_[head], full_key)})
    if not dataclasses.is_dataclass(current):
        raise ConfigError(f"unknown config key '{full_key}': '{head}' has no sub-keys")
    return dataclasses.replace(obj, **{head: _set(current, path[1:], text, full_key)})


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Returns `config` with each `KEY=VALUE` applied in order (then validated as a whole)."""
    # Sections are replaced one by one; the frozen Config re-validates on every replace, so a
    # combination that is only valid once all overrides are in would fail midway. Build it
    # without validation first, then validate once.
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (for example train.epochs=1)")
        key, text = item.split("=", 1)
        key = key.strip()
        path = key.split(".")
        if path[0] not in fields:
            near = difflib.get_close_matches(path[0], list(fields), n=1)
            hint = f": did you mean '{near[0]}'?" if near else f"; sections are {', '.join(fields)}"
            raise ConfigError(f"unknown config key '{key}'{hint}")
        if len(path) == 1 and path[0] in ("experiment_file", "experiment_sha256"):
            raise ConfigError(f"'{key}' is recorded by jaxmodels (the experiment file a config was "
                              f"loaded from, and its hash), not set by an override")
        if len(path) == 1:
            if path[0] != "name":
                raise ConfigError(f"'{key}' is a section, not a value: set one of its keys, e.g. '{key}.{dataclasses.fields(fields[key])[0].name}=...'")
            fields["name"] = text
        else:
            fields[path[0]] = _set(fields[path[0]], path[1:], text, key)
    return Config(**fields)


# ---------------------------------------------------------------------------------------------
# Files and JSON.


def run_file(path: str | pathlib.Path, function: str, *, kind: str, example: str, tiny: bool,
             returns: str):
    """Executes a Python file (an experiment or a sweep file) and returns `function(tiny=tiny)`.
    Anything that goes wrong in the user's code is one ConfigError line naming the file; a
    ConfigError the file raises itself passes through as it is."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file {str(path)!r} not found: pass a path such as {example}")
    if path.suffix != ".py":
        raise ConfigError(f"{kind} file {str(path)!r} is not a Python file: pass a .py file defining "
                          f"{function}(tiny=False), such as {example}")
    spec = importlib.util.spec_from_file_location(f"jaxmodels_{kind}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered so that the file's dataclasses can resolve their annotations (typing looks the
    # defining module up in sys.modules) and its classes can be found again by module name.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except SyntaxError as e:
        raise ConfigError(f"{kind} file {str(path)!r} does not parse: line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - any failure in user code becomes one line
        raise ConfigError(f"{kind} file {str(path)!r} failed to run: {type(e).__name__}: {e}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ConfigError(f"{kind} file {str(path)!r} has no {function}(tiny=False) function returning {returns}")
    try:
        return fn(tiny=tiny)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - as above: a bug in the file, one line
        raise ConfigError(f"{function}() in {str(path)!r} failed to run: {type(e).__name__}: {e}") from None


def file_sha256(path: str | pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def load(path: str | pathlib.Path, *, tiny: bool = False) -> Config:
    """Runs an experiment file and returns its `get_config(tiny=...)`, recording the file's
    absolute path and content hash in the config. A .json file is a config.json a run (or
    `jaxmodels import-hf`) wrote, read as it is."""
    if str(path).endswith(".json"):
        try:
            return from_dict(json.loads(pathlib.Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is not a readable config.json ({type(e).__name__})") from None
    config = run_file(path, "get_config", kind="config", example="experiments/configs/seed_cnn_mnist.py",
                      tiny=tiny, returns="a jaxmodels Config")
    if not isinstance(config, Config):
        raise ConfigError(f"get_config() in {str(path)!r} returned {type(config).__name__}, expected jaxmodels.config.Config")
    return dataclasses.replace(config, experiment_file=str(pathlib.Path(path).resolve()),
                               experiment_sha256=file_sha256(path))


def to_dict(config: Config) -> dict:
    """A JSON-ready dict; the model section records its `kind`."""
    out = dataclasses.asdict(config)
    out["model"] = {"kind": config.model.kind, **out["model"]}
    return out


def from_dict(d: dict) -> Config:
    """Inverse of `to_dict`."""
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        raise ConfigError(f"not a jaxmodels config (expected an object with a 'model' section, got "
                          f"{type(d).__name__})")
    d = dict(d)
    model = dict(d.pop("model"))
    kind = model.pop("kind", None)
    source = d.get("experiment_file")
    if kind not in registry.MODELS and source and pathlib.Path(source).is_file():
        # The model was declared in the experiment file: running it registers the class again.
        run_file(source, "get_config", kind="config", example=source, tiny=False,
                 returns="a jaxmodels Config")
    if kind not in registry.MODELS and source:
        raise ConfigError(f"model kind {kind!r} was declared in {source}, which is no longer there: "
                          f"restore the file (or register the model before reading this config)")
    model_cls = registry.model_entry(str(kind)).config_class

    def build(cls, values):
        hints = typing.get_type_hints(cls)
        kw = {}
        for k, v in values.items():
            if k not in hints:
                raise ConfigError(f"unknown config key '{k}' for {cls.__name__}")
            kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    return Config(
        model=build(model_cls, model),
        data=build(DataConfig, d.pop("data", {})),
        objective=build(ObjectiveConfig, d.pop("objective", {})),
        optimizer=build(OptimizerConfig, d.pop("optimizer", {})),
        train=build(TrainConfig, d.pop("train", {})),
        parallel=build(ParallelConfig, d.pop("parallel", {})),
        checkpoint=build(CheckpointConfig, d.pop("checkpoint", {})),
        **d,
    )


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False)
