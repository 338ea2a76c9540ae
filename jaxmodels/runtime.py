"""The JAX runtime a jaxmodels run starts with: a persistent compilation cache, XLA's CPU flags and
settings of the host allocator.

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

Host allocator: XLA's CPU runtime asks malloc for one block holding all of a step's temporaries
(1.2 GB for the 6-layer GPT of benchmarks/transformer_levers.py) at every execution and frees it
after. glibc maps a block that large afresh each time, in 4 KiB pages, so every step faulted in
and zeroed it again: 307,000 page faults and 0.44 CPU-s of kernel time per 1.34 s step. With
glibc's tunable glibc.malloc.hugetlb=1, malloc asks for transparent huge pages on those maps, so
the kernel faults the block in 2 MiB at a time (it still zeroes it): 1,100 faults, 0.22 CPU-s,
1337 -> 1200 ms per step, and the 4-layer GPT 34.2 -> 31.3 ms (`python
benchmarks/host_allocator.py`, 2-core Intel Xeon, 2026-12-04; no effect where the system's
transparent huge pages are "never"). glibc reads the tunable only when a process starts, so
`host_allocator_env` names it for processes about to start, and the CLI re-executes itself once
with it for the commands that run steps (train, eval, sweep, coordcheck; `cli.main` as a program
only, before JAX starts; the second start-up costs about 1.1 s). `fit` called from Python cannot
change its own process: start Python with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for the same
gain. CPU runs on glibc Linux only; a GLIBC_TUNABLES the user set is left as it is, and
JAXMODELS_HOST_ALLOCATOR=0 switches it off. (Keeping the block in malloc's heap instead, with
mallopt at run time, made no faults but fragmented the heap: RSS grew 1.7 -> 5.2 GB in 25 steps.)

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
ALLOCATOR_ENV = "JAXMODELS_HOST_ALLOCATOR"
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


def late_flags_notice(flags: tuple[str, ...] = CPU_FLAGS) -> str:
    """The line `configure_xla_flags` prints (once per process) when JAX had started first."""
    return (f"jaxmodels: JAX had started before this call, so its XLA CPU flags ({' '.join(flags)}) "
            f"are not applied; set XLA_FLAGS before JAX starts to use them ({FLAGS_ENV}=0 silences this)")


def configure_xla_flags(flags: tuple[str, ...] = CPU_FLAGS) -> str | None:
    """Sets XLA_FLAGS to `flags` for a CPU run when the user has not set XLA_FLAGS; returns what
    was set, or None. Must run before JAX starts its backend (it says so once if too late)."""
    if not flags or "XLA_FLAGS" in os.environ or _switched_off(FLAGS_ENV):
        return None
    if _backend_started():
        import jax

        if jax.default_backend() == "cpu":
            _say_once(late_flags_notice(flags))
        return None
    if _accelerator_expected():
        return None
    os.environ["XLA_FLAGS"] = " ".join(flags)
    return os.environ["XLA_FLAGS"]


HOST_TUNABLES = "glibc.malloc.hugetlb=1"


def host_allocator_env() -> dict[str, str]:
    """The environment a CPU process should start with for the host allocator (see the module
    docstring): {"GLIBC_TUNABLES": HOST_TUNABLES}, or {} when it is switched off, set already (by
    the user or by an earlier call), not glibc Linux, or an accelerator run."""
    if (_switched_off(ALLOCATOR_ENV) or "GLIBC_TUNABLES" in os.environ
            or not sys.platform.startswith("linux") or _accelerator_expected()):
        return {}
    import platform

    return {"GLIBC_TUNABLES": HOST_TUNABLES} if platform.libc_ver()[0] == "glibc" else {}


def host_allocator_active() -> bool:
    """Whether this process was started with the host allocator's tunable (read from the
    environment, which is where glibc read it at start-up)."""
    return HOST_TUNABLES in os.environ.get("GLIBC_TUNABLES", "").split(":")


def configure() -> None:
    """The XLA flags and the compile cache: what the CLI and `fit` call before their first
    compile (the host allocator needs a new process: see host_allocator_env)."""
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
    if host_allocator_active() and jax.default_backend() == "cpu":
        words += "; huge-page host allocator"
    return words


__all__ = ["ALLOCATOR_ENV", "CACHE_ENV", "FLAGS_ENV", "CPU_FLAGS", "cache_root", "compile_cache_dir", "configure",
           "configure_compile_cache", "configure_xla_flags", "describe", "HOST_TUNABLES",
           "host_allocator_active", "host_allocator_env", "late_flags_notice"]
