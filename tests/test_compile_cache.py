"""The runtime the CLI and `fit` start with (jaxmodels/runtime.py): the persistent compilation
cache is hit on a second launch, switches off, and nothing changes at import.

Every run is a subprocess with a cache folder of its own (JAXMODELS_CACHE_DIR), since the cache
and XLA_FLAGS are per-process settings that must be made before JAX compiles anything. Compiles
are counted through JAX's monitoring events (/jax/compilation_cache/cache_hits and
cache_misses), which a listener registered before the CLI runs sees.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]
MLP = str(ROOT / "experiments/configs/mlp_mnist.py")
TINY = ["data.dataset=digits", "train.steps=3", "train.eval_every=none",
        "checkpoint.every_steps=none"]

# Runs the CLI in this process with a listener on JAX's cache events; prints the counts.
COUNTING_CLI = textwrap.dedent("""
    import json, sys
    import jax.monitoring
    counts = {"hits": 0, "misses": 0}
    def listen(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            counts["hits"] += 1
        elif event == "/jax/compilation_cache/cache_misses":
            counts["misses"] += 1
    jax.monitoring.register_event_listener(listen)
    from jaxmodels import cli
    rc = cli.main(sys.argv[1:])
    print("COUNTS " + json.dumps(counts))
    sys.exit(rc)
""")


def _env(cache: pathlib.Path, **extra) -> dict:
    # Without the suite's own cache settings (a conftest may share one cache across tests).
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAXMODELS_COMPILE_CACHE")
           and not k.startswith("JAX_PERSISTENT_CACHE_")}
    return {**env, "PYTHONPATH": str(ROOT), "JAXMODELS_CACHE_DIR": str(cache), **extra}


def _train(cache, workdir, *flags, **env) -> tuple[dict, dict, str]:
    proc = subprocess.run([sys.executable, "-c", COUNTING_CLI, "train", MLP, "--tiny", *TINY,
                           "--workdir", str(workdir), *flags], env=_env(cache, **env),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.split("COUNTS ")[-1])
    return counts, json.loads((workdir / "summary.json").read_text()), proc.stderr


def _entries(cache: pathlib.Path) -> set:
    xla = cache / "xla"
    return {p.name for p in xla.iterdir()} if xla.is_dir() else set()


def test_second_launch_loads_every_compiled_program_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    first, summary1, log1 = _train(cache, tmp_path / "run1")
    written = _entries(cache)
    assert first["hits"] == 0 and first["misses"] > 0 and written, (first, written)
    assert f"compile cache {cache / 'xla'}" in log1  # the start-up line says where

    second, summary2, _ = _train(cache, tmp_path / "run2")
    # Every compile of the second launch is a load from the cache, nothing is written again...
    assert second["misses"] == 0 and second["hits"] > 0, (first, second)
    assert _entries(cache) == written
    # ... and the loaded programs compute what the compiled ones did.
    assert summary2["train_loss"] == summary1["train_loss"]
    assert summary2["eval_loss"] == summary1["eval_loss"]


def test_switched_off_the_cache_folder_stays_empty(tmp_path):
    cache = tmp_path / "cache"
    counts, _, log = _train(cache, tmp_path / "run", "--no-compile-cache")
    assert counts == {"hits": 0, "misses": 0}
    assert _entries(cache) == set()
    assert "no compile cache" in log


def test_switch_off_by_environment_touches_no_setting(tmp_path, monkeypatch):
    # The CLI flag above works through this variable (so sweep workers inherit it).
    import jax

    from jaxmodels import runtime

    monkeypatch.setenv("JAXMODELS_COMPILE_CACHE", "0")
    monkeypatch.setenv("JAXMODELS_CACHE_DIR", str(tmp_path / "cache"))
    before = jax.config.jax_compilation_cache_dir
    assert runtime.configure_compile_cache() in (None, before)  # a folder set earlier stays
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "cache").exists()


# Imports everything a user or the CLI imports, then checks JAX's settings and the environment.
IMPORT_CHECK = textwrap.dedent("""
    import json, os, sys
    import jax
    names = sorted(n for n in jax.config.values if hasattr(jax.config, n))
    before = {n: repr(getattr(jax.config, n)) for n in names}
    env_before = dict(os.environ)
    import jaxmodels, jaxmodels.cli, jaxmodels.runtime, jaxmodels.api
    jaxmodels.Model, jaxmodels.TrainState  # the lazily imported part of the API too
    changed = [n for n in names if repr(getattr(jax.config, n)) != before[n]]
    out = {"changed": changed, "env_changed": dict(os.environ) != env_before}
    # A cache folder the user chose (JAX_COMPILATION_CACHE_DIR) is kept, thresholds and all;
    # a user's XLA_FLAGS is never touched.
    from jaxmodels import runtime
    runtime.configure()
    out["dir"] = jax.config.jax_compilation_cache_dir
    out["min_time"] = jax.config.jax_persistent_cache_min_compile_time_secs
    out["xla_flags"] = os.environ.get("XLA_FLAGS")
    print("OUT " + json.dumps(out))
""")


def test_import_changes_nothing_and_user_settings_win(tmp_path):
    user_dir = str(tmp_path / "mine")
    proc = subprocess.run([sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True,
                          env=_env(tmp_path / "cache", JAX_COMPILATION_CACHE_DIR=user_dir,
                                   XLA_FLAGS="--xla_cpu_enable_fast_math=false"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.split("OUT ")[-1])
    assert out["changed"] == [] and not out["env_changed"], out
    assert out["dir"] == user_dir and out["min_time"] == 1.0  # JAX's default, as the user left it
    assert out["xla_flags"] == "--xla_cpu_enable_fast_math=false"
    assert not (tmp_path / "cache").exists()
