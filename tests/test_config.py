"""Typed configs: overrides, validation errors, files, JSON round trip."""

import dataclasses
import os
import pathlib
import subprocess
import sys

import pytest

from jaxmodels import config as C
from jaxmodels.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments" / "configs").glob("*.py"))


def test_overrides_are_parsed_by_declared_type():
    cfg = C.apply_overrides(C.Config(), [
        "train.epochs=1", "optimizer.learning_rate=3e-4", "train.steps=none",
        "data.download=true", "model.filters=16", "optimizer.grad_clip_norm=1",
        "data.data_dir=/tmp/x", "name=abc"])
    assert cfg.train.epochs == 1.0 and isinstance(cfg.train.epochs, float)
    assert cfg.optimizer.learning_rate == 3e-4
    assert cfg.train.steps is None
    assert cfg.data.download is True
    assert cfg.model.filters == 16
    assert cfg.optimizer.grad_clip_norm == 1.0
    assert cfg.data.data_dir == "/tmp/x"
    assert cfg.name == "abc"


def test_tuple_fields_and_model_specific_keys():
    from jaxmodels.models import BatchNormCNNConfig
    cfg = C.Config(model=BatchNormCNNConfig())
    cfg = C.apply_overrides(cfg, ["model.block_filters=16,32,64", "model.dropout=0.1"])
    assert cfg.model.block_filters == (16, 32, 64)
    assert cfg.model.dropout == 0.1


def test_overrides_do_not_mutate_the_input():
    base = C.Config()
    C.apply_overrides(base, ["train.seed=5"])
    assert base.train.seed == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.train.seed = 1


@pytest.mark.parametrize("override, message", [
    ("train.epoch=1", "unknown config key 'train.epoch': did you mean 'train.epochs'?"),
    ("trian.steps=1", "unknown config key 'trian.steps': did you mean 'train'?"),
    ("model.width=3", "unknown config key 'model.width'"),
    ("train.steps=abc", "train.steps='abc': expected an integer"),
    ("train.steps=1.5", "train.steps='1.5': expected an integer"),
    ("optimizer.learning_rate=fast", "optimizer.learning_rate='fast': expected a number"),
    ("data.download=maybe", "data.download='maybe': expected true or false"),
    ("optimizer.name=adm", "optimizer.name='adm' is not one of sgd, adam, adamw, lion, adafactor"),
    ("optimizer.learning_rate=-1", "optimizer.learning_rate must be positive, got -1.0"),
    ("data.batch_size=0", "data.batch_size must be positive, got 0"),
    ("train.epochs=0", "train.epochs must be positive"),
    ("train.microbatches=3", "data.batch_size=32 is not divisible by train.microbatches=3"),
    ("optimizer.b2=1.5", "optimizer.b2 must be in [0, 1)"),
    ("model.filters=-2", "model.filters must be positive"),
    ("train=3", "'train' is a section, not a value"),
    ("train.steps", "is not KEY=VALUE"),
    ("optimizer.weight_decay=0.1", "use optimizer.name=adamw"),
])
def test_bad_overrides_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        C.apply_overrides(C.Config(), [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_steps_win_over_epochs():
    from jaxmodels.training.loop import total_steps
    cfg = C.apply_overrides(C.Config(), ["train.steps=7", "train.epochs=3"])
    assert total_steps(cfg.train, steps_per_epoch=100.0) == 7
    cfg = C.apply_overrides(C.Config(), ["train.epochs=0.5"])
    assert total_steps(cfg.train, steps_per_epoch=1562.5) == 782
    with pytest.raises(ConfigError, match="set train.steps or train.epochs"):
        C.apply_overrides(C.Config(), ["train.epochs=none"])


def test_json_round_trip():
    from jaxmodels.models import BatchNormCNNConfig
    cfg = C.Config(model=BatchNormCNNConfig(block_filters=(8, 8)), name="x")
    assert C.from_dict(C.to_dict(cfg)) == cfg
    import json
    assert C.from_dict(json.loads(C.to_json(cfg))) == cfg


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_files_load_with_docstring_and_tiny_variant(path):
    full = C.load(path)
    tiny = C.load(path, tiny=True)
    assert isinstance(full, C.Config) and isinstance(tiny, C.Config)
    assert full != tiny
    import ast
    doc = ast.get_docstring(ast.parse(path.read_text()))
    for word in ("Command:", "Runtime:", "Expected:", "Tiny:"):
        assert word in doc, f"{path.name} docstring lacks {word}"
    assert f"experiments/configs/{path.name}" in doc


def test_seed_cnn_config_is_the_source_recipe():
    cfg = C.load(ROOT / "experiments/configs/seed_cnn_mnist.py")
    assert (cfg.model.filters, cfg.model.kernel_size) == (32, 3)
    assert cfg.data.batch_size == 32 and cfg.train.epochs == 10
    assert cfg.optimizer.name == "adam" and cfg.data.dataset == "mnist"


@pytest.mark.parametrize("body, message", [
    ("def get_config(tiny=False) return 1\n", "does not parse: line 1"),
    ("x = 1\n", "has no get_config"),
    ("def get_config(tiny=False):\n    return 3\n", "returned int"),
    ("raise RuntimeError('boom')\n", "failed to run: RuntimeError: boom"),
])
def test_bad_config_files(tmp_path, body, message):
    path = tmp_path / "bad.py"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        C.load(path)
    with pytest.raises(ConfigError, match="not found"):
        C.load(tmp_path / "missing.py")


def test_cli_config_errors_exit_2_with_one_line_and_no_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jaxmodels.cli", "train", str(ROOT / "experiments/configs/seed_cnn_mnist.py"),
         "train.epoch=1", "--workdir", str(tmp_path / "run")],
        capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip() == "jaxmodels: error: unknown config key 'train.epoch': did you mean 'train.epochs'?"
    assert not (tmp_path / "run").exists()  # nothing is created before the config is valid


def test_importing_jaxmodels_has_no_side_effects(tmp_path):
    modules = ("jaxmodels, jaxmodels.cli, jaxmodels.training.loop, jaxmodels.training.checkpoint, "
               "jaxmodels.training.resume, jaxmodels.training.mup, jaxmodels.data, jaxmodels.generate, "
               "jaxmodels.scaling.fit, jaxmodels.accounting.flops, jaxmodels.accounting.hardware, "
               "jaxmodels.accounting.results, jaxmodels.orchestration.sweep, jaxmodels.orchestration.packed, "
               "jaxmodels.scaling.coordcheck, jaxmodels.interop.hf, jaxmodels.training.tensorboard, "
               "jaxmodels.training.profile, jaxmodels.data.tokenizers, jaxmodels.data.prepare, "
               "jaxmodels.data.image_folder")
    # Heavy or optional packages the library uses lazily: importing it must not load them (each
    # costs seconds of start-up; torch and keras are benchmark peers only).
    lazy = ("torch", "transformers", "tensorboardX", "tokenizers", "safetensors", "keras", "grain")
    code = (
        "import os, jax\n"
        "env = dict(os.environ)\n"
        "flags = {k: getattr(jax.config, k) for k in ('jax_enable_x64', 'jax_default_matmul_precision', 'jax_platforms', 'jax_numpy_rank_promotion')}\n"
        f"import {modules}\n"
        "assert dict(os.environ) == env\n"
        "assert flags == {k: getattr(jax.config, k) for k in flags}\n"
        "from jax._src import xla_bridge\n"
        "assert not xla_bridge._backends, 'importing initialised a JAX backend'\n"
        "import sys\n"
        f"loaded = [m for m in {lazy!r} if m in sys.modules]\n"
        "assert not loaded, f'importing loaded {loaded}'\n"
        "print('clean')\n")
    # The CPU peak cache is written only when a peak is asked for, never on import.
    cache = tmp_path / "cache"
    env = {**os.environ, "JAXMODELS_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"
    assert not cache.exists()


@pytest.mark.parametrize("tiny", [False, True])
def test_embedded_default_is_the_seed_cnn_experiment(tiny):
    # An installed wheel has no experiments/ folder: `jaxmodels train [--tiny]` must not need it,
    # and must still mean the documented recipe.
    loaded = C.load(ROOT / "experiments/configs/seed_cnn_mnist.py", tiny=tiny)
    assert dataclasses.replace(loaded, experiment_file=None, experiment_sha256=None) == \
        C.default_config(tiny=tiny)
