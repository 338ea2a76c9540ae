"""Worker processes of a sweep (`jaxmodels sweep --workers N`): the parent's pool and the worker.

Parent side, `Pool`: each run is a subprocess (`python -m jaxmodels.orchestration.workers
--worker ...`), at most N at once, each pinned to its own 1/N of the CPUs, its output in
DIR/logs/<run>.log. Workers start in a session (process group) of their own, so a Ctrl-C in the
terminal reaches only the parent, which forwards it exactly once (`forwarding_signals`): a
worker that got the terminal's SIGINT and then the parent's would take the second as "stop at
once" and lose its checkpoint.

Worker side, `worker_main`: trains one run; SIGTERM/SIGINT make the loop save a checkpoint and
stop, and the worker then prints one line (no traceback) and exits with 128 + the signal. A
worker never outlives its parent: on Linux `prctl(PR_SET_PDEATHSIG, SIGTERM)` asks the kernel to
send it SIGTERM when the parent dies (the parent's pool threads, which start the workers, live
until every run is done, so that is when PDEATHSIG fires); elsewhere, or where prctl fails, a
thread watching the parent's pid sends it instead.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback

from jaxmodels import config as config_lib
from jaxmodels import runtime
from jaxmodels.errors import RunStopped, UserError

ERROR_PREFIX = "jaxmodels: error: "  # a worker's last line names its error after this
STOP_PREFIX = "jaxmodels: "  # ... or, stopped by a signal, its stop message after this
_PR_SET_PDEATHSIG = 1
PARENT_POLL_S = 0.5


def cpu_slots(workers: int) -> list[tuple[int, ...] | None]:
    """Disjoint CPU sets, one per worker (shared round-robin when workers outnumber CPUs)."""
    if not hasattr(os, "sched_getaffinity"):
        return [None] * workers
    cpus = sorted(os.sched_getaffinity(0))
    if workers >= len(cpus):
        return [(cpus[i % len(cpus)],) for i in range(workers)]
    bounds = [round(i * len(cpus) / workers) for i in range(workers + 1)]
    return [tuple(cpus[a:b]) for a, b in zip(bounds, bounds[1:])]


@dataclasses.dataclass(frozen=True)
class Finished:
    """How one worker ended: its exit status and the log holding its output."""
    returncode: int | None  # None: never started (the sweep was stopping, or Popen failed)
    log_path: pathlib.Path
    error: str | None = None  # why it could not start


class Pool:
    """Runs workers, at most len(slots) at once, each pinned to its slot's CPUs."""

    def __init__(self, workers: int, log_dir: pathlib.Path):
        self.log_dir = log_dir
        self.slots: queue.Queue = queue.Queue()
        for slot in cpu_slots(workers):
            self.slots.put(slot)
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping: int | None = None  # the signal the sweep was stopped by
        # The host allocator's tunable (runtime.py) when this process was not started with it,
        # e.g. a sweep run from Python.
        self.env = {**os.environ, **runtime.host_allocator_env()}
        # The workers import the same jaxmodels source as this process.
        package_root = str(pathlib.Path(config_lib.__file__).resolve().parents[1])
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p)

    def run(self, name: str, workdir: pathlib.Path, config: config_lib.Config) -> Finished:
        cpus = self.slots.get()
        log_path = self.log_dir / f"{name}.log"
        try:
            args = [sys.executable, "-m", "jaxmodels.orchestration.workers", "--worker",
                    "--workdir", str(workdir), "--config-json", config_lib.to_json(config),
                    "--parent-pid", str(os.getpid())]
            if cpus is not None:
                args += ["--cpus", ",".join(map(str, cpus))]
            with self.lock:  # a signal forwarded meanwhile must see every started worker
                if self.stopping is not None:
                    return Finished(None, log_path)
                with log_path.open("w") as log:
                    try:
                        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                                env=self.env, start_new_session=True)
                    except OSError as e:
                        return Finished(None, log_path, f"cannot start a worker: {e}")
                self.procs.add(proc)
            rc = proc.wait()
            with self.lock:
                self.procs.discard(proc)
        finally:
            self.slots.put(cpus)
        return Finished(rc, log_path)

    def forward(self, signum: int) -> None:
        """Starts no more workers and passes `signum` to the running ones."""
        with self.lock:
            self.stopping = signum
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    def wait_all(self) -> None:
        while True:
            with self.lock:
                procs = list(self.procs)
            if not procs:
                return
            for proc in procs:
                proc.wait()


@contextlib.contextmanager
def forwarding_signals(pool: Pool):
    """SIGTERM/SIGINT to the parent go to every running worker (each saves its checkpoint and
    stops); the parent keeps waiting for them. Handlers exist only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, lambda signum, frame: pool.forward(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def error_line(finished: Finished) -> str:
    """The one line that says why a worker failed: its marked error line, else its exit."""
    if finished.error is not None:
        return finished.error
    log_path, rc = finished.log_path, finished.returncode
    lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    marked = [ln for ln in lines if ln.startswith(ERROR_PREFIX)]
    if marked:
        return marked[-1][len(ERROR_PREFIX):]
    why = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
    return f"worker {why}" + (f": {lines[-1][:300]}" if lines else "") + f" (see {log_path})"


# ---------------------------------------------------------------------------------------------
# The worker process


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM to this process, once, when the parent dies: the loop then saves and stops (a
    second signal would mean "stop at once", so only one of the two mechanisms is armed)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent_pid:  # it died before prctl ran: nobody will signal
                os.kill(os.getpid(), signal.SIGTERM)
            return

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watcher", daemon=True).start()


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    return (text.strip().splitlines() or [type(e).__name__])[0][:500]


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxmodels.orchestration.workers --worker")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--config-json", required=True, help="the resolved config (config.json)")
    parser.add_argument("--cpus", default=None, help="comma-separated CPU ids to run on")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop (saving a checkpoint) when this process is gone")
    args = parser.parse_args(argv)
    from jaxmodels.training import quiet

    quiet.install()  # the worker's log gets the one line, as a terminal would
    if args.parent_pid is not None:
        _die_with_parent(args.parent_pid)
    if args.cpus:
        # Before JAX starts: XLA's CPU thread pool is sized from the CPUs this process may use.
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    try:
        runtime.configure()  # the parent's cache and flag switches arrive in the environment
        from jaxmodels.training import loop  # after the affinity: it starts JAX

        config = config_lib.from_dict(json.loads(args.config_json))
        loop.train(config, args.workdir)
    except UserError as e:
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr)
        return 2
    except RunStopped as e:  # a signal (checkpoint saved) or a non-finite loss: its own line
        print(f"{ERROR_PREFIX if e.exit_code < 128 else STOP_PREFIX}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a second signal: stopped at once
        print(f"{STOP_PREFIX}interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the traceback goes to the log, one line to the sweep
        traceback.print_exc()
        print(f"{ERROR_PREFIX}{_one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = worker_main(sys.argv[1:])
    if code:
        # Like the CLI: threads left hanging by a failed save must not keep the worker alive.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
