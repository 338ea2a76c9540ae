"""Whole-or-nothing file writes: a file a later command reads is never seen half written.

    files.write_atomic(workdir / "config.json", text)

The text goes to NAME.tmp beside the target, is flushed to the disk (fsync), and then renamed
over the target (`os.replace`, atomic on POSIX and Windows within one file system). A process
killed at any point leaves the old file or the new one, never a torn one: only NAME.tmp may
be left behind, and the next write replaces it. Without the fsync a power cut could still
leave the renamed file empty on some file systems (ext4 with delalloc, XFS).
"""

from __future__ import annotations

import os
import pathlib


def write_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes `text` (UTF-8) to `path`, replacing any older file in one step."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
