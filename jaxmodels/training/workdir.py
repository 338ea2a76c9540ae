"""One process per workdir: an OS lock held for the whole of a `train` or `eval`.

    with workdir.locked(path, "train"):
        ...  # nothing else can train, evaluate or resume into `path` meanwhile

Two runs on one workdir destroy each other's files: one rewrites metrics.jsonl with
`os.replace` while the other appends to the old inode, and both save checkpoints of the same
steps. The lock is `fcntl.flock` on WORKDIR/.lock, which the kernel drops when the holder's
last descriptor closes, so a process killed with `kill -9` never leaves a stale lock behind: a
relaunch simply takes it. The file's content (pid and command line of the holder) is only
informative, for the error message of the process that has to wait.

Where `fcntl` does not exist (Windows) runs are not guarded.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import sys

from jaxmodels.errors import UserError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


class WorkdirBusy(UserError):
    """Another live process holds the workdir's lock."""


def _holder(path: pathlib.Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "another process"
    pid, _, cmd = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"process {pid}" + (f" ({cmd[:200]})" if cmd else "")


def _command_line() -> str:
    # argv[0] is the script or module file (cli.py, bin/jaxmodels, sweep.py for a worker).
    return " ".join(shlex.quote(a) for a in ["jaxmodels", *sys.argv[1:]])[:300]


@contextlib.contextmanager
def locked(workdir: str | os.PathLike):
    """Holds an exclusive lock on `workdir` (which must exist) until the block ends.

    Raises WorkdirBusy at once, without waiting or writing anything, when another process holds
    it. The lock is per open file, so a second `locked` on the same workdir in the same process
    (a sweep running its runs one after another never nests them) would fail too."""
    if fcntl is None:
        yield
        return
    path = pathlib.Path(workdir) / LOCK_FILE
    try:
        # O_CREAT without O_TRUNC: the holder's pid must still be readable if we lose the race.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"workdir {str(workdir)!r} is not writable ({e.strerror}): pass --workdir "
                        f"with a folder you can write to") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusy(f"workdir {str(workdir)!r} is in use by {_holder(path)}: wait for it "
                              f"or pick another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {_command_line()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)
