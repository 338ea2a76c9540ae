"""Launches `jaxmodels.cli.main(argv)` in forked children, each optionally killed with SIGKILL at
one write point (the crash-consistency matrix, tests/test_crash_matrix.py).

It reads one JSON request per stdin line, {"argv": [...], "log": PATH, "kill": KILL or null},
forks a child that installs the kill hook and runs the CLI (stdout and stderr into PATH), and
answers one JSON line {"code": exit code} or {"killed": true}. The parent imports JAX,
jaxmodels and the digits data once but never starts a JAX backend, so every child starts its
own, as a fresh `jaxmodels train` would, without paying some five seconds of imports each: what
keeps the matrix within its time budget. Compilations are shared through JAX's persistent cache.

KILL is one of
  {"write": NAME, "n": N}         the N-th non-empty write to a file named NAME (or NAME.tmp,
                                  or any NAME.* sibling a writer stages it in) writes half of
                                  its bytes, then the process is killed: a torn write
  {"commit": "checkpoints"|"weights", "n": N}
                                  orbax's N-th commit of a checkpoint step (or of weights/):
                                  every file is written, the final rename has not happened
  {"call": "MODULE:QUALNAME", "n": N, "when": "before"|"after"}
                                  the N-th call of a jaxmodels function, killed before it runs
                                  or as soon as it returns (an async save then is in flight)
Nothing here is part of jaxmodels: the hooks patch it from outside, in the child only.
"""

import builtins
import importlib
import io
import json
import os
import signal
import sys

import jax

jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

from jaxmodels import cli, data  # noqa: E402  (after the cache settings, as a user's script would)
from jaxmodels.training import loop, plots  # noqa: E402,F401  (the heavy imports, once, in the parent)

data.load_image_dataset("digits")  # imports sklearn and reads the data once
# Matplotlib loads its fonts on the first figure; in the parent, once for every child.
plots.curves_figure([{"step": 1, "loss": 1.0, "learning_rate": 0.1}], "warm-up").savefig(
    io.BytesIO(), format="png")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _named(path, name: str) -> bool:
    base = os.path.basename(os.fspath(path))
    return base == name or base.startswith(name + ".")


class _Counter:
    def __init__(self, n: int):
        self.left = n

    def hit(self) -> bool:
        self.left -= 1
        return self.left == 0


def _tear_writes(name: str, n: int) -> None:
    counter = _Counter(n)
    real_open, real_write = io.open, os.write

    class Torn:
        def __init__(self, f):
            self._f = f

        def write(self, text):
            if len(text) and counter.hit():
                self._f.write(text[:len(text) // 2])
                self._f.flush()
                _die()
            return self._f.write(text)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __iter__(self):
            return iter(self._f)

        def __getattr__(self, attr):
            return getattr(self._f, attr)

    def opener(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        return Torn(f) if writing and isinstance(file, (str, os.PathLike)) and _named(file, name) else f

    def write(fd, data_):
        if len(data_):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if _named(target, name) and counter.hit():
                real_write(fd, data_[:len(data_) // 2])
                _die()
        return real_write(fd, data_)

    io.open = builtins.open = opener
    os.write = write


def _kill_at_commit(under: str, n: int) -> None:
    from orbax.checkpoint._src.path import atomicity

    counter = _Counter(n)
    real = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
        final = self._final_path
        if (final.name == under or final.parent.name == under) and counter.hit():
            _die()
        return await real(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def _kill_at_call(target: str, n: int, when: str) -> None:
    module_name, qualname = target.split(":")
    owner = importlib.import_module(module_name)
    *parents, attr = qualname.split(".")
    for p in parents:
        owner = getattr(owner, p)
    real = getattr(owner, attr)
    counter = _Counter(n)

    def wrapped(*args, **kwargs):
        hit = counter.hit()
        if hit and when == "before":
            _die()
        out = real(*args, **kwargs)
        if hit:
            _die()
        return out

    setattr(owner, attr, wrapped)


def _child(request: dict) -> int:
    kill = request.get("kill")
    if kill and "write" in kill:
        _tear_writes(kill["write"], kill["n"])
    elif kill and "commit" in kill:
        _kill_at_commit(kill["commit"], kill["n"])
    elif kill:
        _kill_at_call(kill["call"], kill["n"], kill.get("when", "before"))
    return cli.main(request["argv"])


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 70
        try:
            code = _child(request)
        except BaseException as e:  # noqa: BLE001 - a traceback goes to the log, the code says so
            import traceback

            traceback.print_exc()
            code = 70 if not isinstance(e, SystemExit) else (e.code or 0)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    answer = ({"killed": os.WTERMSIG(status) == signal.SIGKILL} if os.WIFSIGNALED(status)
              else {"code": os.WEXITSTATUS(status)})
    print(json.dumps(answer), flush=True)
