"""Keeps orbax's background noise off a user's terminal (the CLI and sweep workers, not --debug).

A background save or read that fails is reported by the loop as one line. orbax's threads also
print it, with tracebacks, through absl logging, asyncio's "Task exception was never retrieved"
log, "Exception ignored" messages from its event loops being closed or collected at exit, and a
failing thread's own traceback. `install()` silences exactly those channels; anything else still
prints.
"""

from __future__ import annotations

import logging
import sys
import threading


def _from_background(tb) -> bool:
    """True when a traceback runs through orbax, tensorstore or asyncio's event-loop teardown."""
    while tb is not None:
        code = tb.tb_frame.f_code
        if "orbax" in code.co_filename or "tensorstore" in code.co_filename:
            return True
        if "asyncio" in code.co_filename and code.co_name in ("__del__", "close"):
            return True
        tb = tb.tb_next
    return False


def _unraisable(unraisable) -> None:
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
        return
    if _from_background(unraisable.exc_traceback):
        return
    sys.__unraisablehook__(unraisable)


def _thread_exception(args) -> None:
    if _from_background(args.exc_traceback):
        return
    threading.__excepthook__(args)


def install() -> None:
    for name in ("absl", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    sys.unraisablehook = _unraisable
    threading.excepthook = _thread_exception
