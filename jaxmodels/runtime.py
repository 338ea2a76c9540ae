"""The JAX runtime a jaxmodels run starts with: a persistent compilation cache and XLA's CPU flags.

    from jaxmodels import runtime
    runtime.configure()        # the CLI and `jaxmodels.fit` call it, before their first compile

Compilation cache: compiled programs are kept in $JAXMODELS_CACHE_DIR/xla (else
$XDG_CACHE_HOME/jaxmodels/xla, else ~/.cache/jaxmodels/xla), so a second launch of the same
config, every same-shape run of a sweep and every sweep worker load the compiled step instead of
compiling it again. JAX's thresholds are lowered to zero: by default it keeps only programs that
took a second to compile, which leaves out most CPU steps. A `JAX_COMPILATION_CACHE_DIR` (or a
`jax_compilation_cache_dir` set in Python) is left as the user set it, switch or not. Off with
JAXMODELS_COMPILE_CACHE=0 (the CLI's --no-compile-cache sets it, so sweep workers inherit it).
The cache key holds the program, the devices, JAX's version and XLA_FLAGS, so a stale entry is
never loaded; the folder only grows (delete it to reclaim the space).

XLA CPU flags: CPU_FLAGS (measured in benchmarks/xla_flags.py) go into XLA_FLAGS when the user
has not set XLA_FLAGS at all and the run will be on CPU. They are CPU-compiler flags: on a GPU or
TPU host they would only reach the host-side CPU backend, so they are not set there. XLA reads
XLA_FLAGS once, when JAX starts its backend; after that (a notebook that already ran JAX code
before `fit`) they cannot be changed, and `configure` says so once. Off with
JAXMODELS_XLA_FLAGS=0.

Nothing here runs at import: `configure` is an explicit call, made by entry points only (the
library's own functions, `jaxmodels.train` included, never change JAX's global settings).
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys

CACHE_ENV = "JAXMODELS_COMPILE_CACHE"
FLAGS_ENV = "JAXMODELS_XLA_FLAGS"
# Measured with benchmarks/xla_flags.py on these 2-core AMD EPYC machines (jaxlib 0.10.2), each
# setting its own process, interleaved. jaxlib already hands single dots, convolutions and
# reductions to YNNPACK one op at a time; "dot,reduce" replaces that list: dots go to YNNPACK with
# their elementwise producers and consumers fused in (no separate transposing copy of the GELU
# gradient before each weight-gradient dot), reductions stay there, convolutions go back to XLA's
# own (Eigen) kernels. Ratios of steps/s to no flag, medians over 2-3 repeats: GPT 4L/128D 1.20,
# GPT 6L/384D 1.10, LSTM 1x256 1.27, ViT 4x64 1.11, the two-block batch-norm CNN 1.30, the seed
# CNN 0.93-0.96 (within its run-to-run spread of 0.86-1.52). The overwrite form "dot" alone (no
# reduce) halves the seed CNN (its conv-bias gradient reduction leaves YNNPACK), and
# "dot,reduce,individual_convolution" gives back the batch-norm CNN's gain. Losses: equal to
# float32 reassociation (tests/test_xla_flags.py; 6e-3 relative after 40 batch-norm steps). The
# oneDNN dot fusion kills XLA with SIGILL here ("partition compile failed"): not used.
CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=dot,reduce",)

_OFF = ("0", "false", "off", "no")


def _switched_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _OFF


def cache_root() -> pathlib.Path:
    """$JAXMODELS_CACHE_DIR, else $XDG_CACHE_HOME/jaxmodels, else ~/.cache/jaxmodels (read now)."""
    explicit = os.environ.get("JAXMODELS_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(xdg) if os.path.isabs(xdg) else pathlib.Path.home() / ".cache"  # XDG: ignore relative
    return base / "jaxmodels"


def compile_cache_dir() -> pathlib.Path:
    """Where jaxmodels keeps compiled programs (whether or not the cache is on)."""
    return cache_root() / "xla"


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # no public question for "has a backend started?"

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True  # unknown: assume the worst, so flags are not claimed to apply


def _accelerator_expected() -> bool:
    """Will JAX pick a GPU/TPU? Answered without starting a backend: JAX_PLATFORMS, else whether
    an accelerator plugin is installed (how JAX itself finds them)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if "jax" in sys.modules:
        import jax

        platforms = jax.config.jax_platforms or platforms
    if platforms:
        return platforms.split(",")[0].strip().lower() not in ("cpu", "")
    import importlib.metadata
    import importlib.util

    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    try:
        import jax_plugins  # namespace package of the CUDA/ROCm plugins

        if any(True for _ in __import__("pkgutil").iter_modules(jax_plugins.__path__)):
            return True
    except ImportError:
        pass
    return importlib.util.find_spec("libtpu") is not None


@functools.lru_cache(maxsize=None)  # "once": one line per process, however often fit is called
def _say_once(line: str) -> None:
    print(line, file=sys.stderr)


def configure_compile_cache() -> str | None:
    """Turns on JAX's persistent compilation cache in compile_cache_dir() unless it is switched
    off or the user chose a folder; returns the folder in use, or None."""
    import jax

    user_dir = jax.config.jax_compilation_cache_dir  # JAX reads JAX_COMPILATION_CACHE_DIR into it
    if user_dir:
        return user_dir
    if _switched_off(CACHE_ENV):
        return None
    path = compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _say_once(f"jaxmodels: compile cache off: cannot create {path} ({e.strerror}); set "
                  f"JAXMODELS_CACHE_DIR to a writable folder")
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX's defaults keep only programs that took >= 1 s to compile; most CPU steps take less.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return str(path)


def configure_xla_flags(flags: tuple[str, ...] = CPU_FLAGS) -> str | None:
    """Sets XLA_FLAGS to `flags` for a CPU run when the user has not set XLA_FLAGS; returns what
    was set, or None. Must run before JAX starts its backend (it says so once if too late)."""
    if not flags or "XLA_FLAGS" in os.environ or _switched_off(FLAGS_ENV):
        return None
    if _backend_started():
        import jax

        if jax.default_backend() == "cpu":
            _say_once(f"jaxmodels: JAX had started before this call, so its XLA CPU flags "
                      f"({' '.join(flags)}) are not applied; set XLA_FLAGS before JAX starts to "
                      f"use them ({FLAGS_ENV}=0 silences this)")
        return None
    if _accelerator_expected():
        return None
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]


def configure() -> None:
    """Both of the above: what the CLI and `fit` call before their first compile."""
    configure_xla_flags()
    configure_compile_cache()


def describe() -> str:
    """A few words on the runtime in effect, for the start-up line: read from JAX and the
    environment, so it is true however they were set."""
    import jax

    cache = jax.config.jax_compilation_cache_dir
    if cache:
        home = str(pathlib.Path.home())
        words = "compile cache " + ("~" + cache[len(home):] if cache.startswith(home + os.sep) else cache)
    else:
        words = "no compile cache"
    if CPU_FLAGS and os.environ.get("XLA_FLAGS") == " ".join(CPU_FLAGS) and jax.default_backend() == "cpu":
        words += "; jaxmodels' XLA CPU flags"
    return words


__all__ = ["CACHE_ENV", "FLAGS_ENV", "CPU_FLAGS", "cache_root", "compile_cache_dir", "configure",
           "configure_compile_cache", "configure_xla_flags", "describe"]
